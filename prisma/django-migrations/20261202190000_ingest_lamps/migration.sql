-- REGISTRY_SCHEMA=django: lampi-ingest's own bookkeeping beside the LAMPI site's tables.
-- Nothing here touches a table Django owns (no foreign key to lampi_lampi either: a lamp
-- deleted on the site is recognised by its association code, see IngestLamp in schema.prisma).

-- CreateTable
CREATE TABLE "ingest_lamps" (
    "device_id" VARCHAR(12) NOT NULL,
    "association_code" VARCHAR(32) NOT NULL,
    "created_by_job_id" VARCHAR(64),
    "bridge_connected" BOOLEAN,
    "bridge_state_at" TIMESTAMPTZ(3),
    "bridge_state_job_id" VARCHAR(64),

    CONSTRAINT "ingest_lamps_pkey" PRIMARY KEY ("device_id")
);
