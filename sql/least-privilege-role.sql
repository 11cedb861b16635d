-- Least-privilege role for coder-reinit-guard. Run as a superuser (or the owner of coderd's
-- tables) while connected to coderd's database; replace the password first.
CREATE ROLE coder_reinit_guard LOGIN PASSWORD 'change-me';
-- Belt and braces: the guard also asks for read-only sessions itself.
ALTER ROLE coder_reinit_guard SET default_transaction_read_only = on;
DO $$ BEGIN
  EXECUTE format('GRANT CONNECT ON DATABASE %I TO coder_reinit_guard', current_database());
END $$;
GRANT USAGE ON SCHEMA public TO coder_reinit_guard;
-- Exactly the columns of the one query the guard runs per decision.
GRANT SELECT (workspace_id, build_number, transition, initiator_id, job_id) ON workspace_builds TO coder_reinit_guard;
GRANT SELECT (id, input) ON provisioner_jobs TO coder_reinit_guard;
