-- REGISTRY_SCHEMA=django: as prisma/migrations/20261204190000_message_id_columns, on our own
-- ingest_lamps (never a table Django owns). The columns hold a message id, not a job id.

-- RenameColumn
ALTER TABLE "ingest_lamps" RENAME COLUMN "created_by_job_id" TO "created_by_message_id";

-- RenameColumn
ALTER TABLE "ingest_lamps" RENAME COLUMN "bridge_state_job_id" TO "bridge_state_message_id";
