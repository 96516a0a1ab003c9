-- The columns hold a message id (the subscriber's 32-hex id of an MQTT message), not a job id:
-- named for what they hold. A rename keeps every value and the column's type.

-- RenameColumn
ALTER TABLE "devices" RENAME COLUMN "created_by_job_id" TO "created_by_message_id";

-- RenameColumn
ALTER TABLE "devices" RENAME COLUMN "bridge_state_job_id" TO "bridge_state_message_id";
