-- Least-privilege role for coder-reinit-guard. Run as a superuser (or the owner of coderd's
-- tables) while connected to coderd's database. Safe to run again: it creates the role only
-- if it is missing and re-applies the grants. It sets no password, so none is ever written
-- in a file: set it separately (psql: \password coder_reinit_guard). Until then the role
-- cannot log in with a password.
DO $$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'coder_reinit_guard') THEN
    CREATE ROLE coder_reinit_guard LOGIN;
  END IF;
END $$;
ALTER ROLE coder_reinit_guard LOGIN;
-- Belt and braces: the guard also asks for read-only sessions itself.
ALTER ROLE coder_reinit_guard SET default_transaction_read_only = on;
DO $$ BEGIN
  EXECUTE format('GRANT CONNECT ON DATABASE %I TO coder_reinit_guard', current_database());
END $$;
GRANT USAGE ON SCHEMA public TO coder_reinit_guard;
-- Exactly the columns of the one query the guard runs per decision.
GRANT SELECT (workspace_id, build_number, transition, initiator_id, job_id) ON workspace_builds TO coder_reinit_guard;
GRANT SELECT (id, input) ON provisioner_jobs TO coder_reinit_guard;
