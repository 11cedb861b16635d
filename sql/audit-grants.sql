-- Extra grants for `coder-reinit-guard audit`, on top of least-privilege-role.sql. The guard
-- itself does not need these; the audit reads who owns which workspace and the jobs' outcome.
GRANT SELECT (id, owner_id, name, deleted) ON workspaces TO coder_reinit_guard;
GRANT SELECT (id, username) ON users TO coder_reinit_guard;
GRANT SELECT (created_at) ON workspace_builds TO coder_reinit_guard;
GRANT SELECT (started_at, completed_at, canceled_at, error) ON provisioner_jobs TO coder_reinit_guard;
