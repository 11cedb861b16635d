-- The slice of coderd 2.34's schema the guard (and its stand-in) touch: these tables with
-- the columns, types, keys and generated column coderd really has. Tables and foreign keys
-- to tables outside this slice (organizations, templates, template_versions, presets) are
-- left out; their id columns stay.

CREATE TYPE login_type AS ENUM ('password', 'github', 'oidc', 'token', 'none', 'oauth2_provider_app');
CREATE TYPE user_status AS ENUM ('active', 'suspended', 'dormant');
CREATE TYPE workspace_transition AS ENUM ('start', 'stop', 'delete');
CREATE TYPE build_reason AS ENUM ('initiator', 'autostart', 'autostop', 'dormancy', 'failedstop',
  'autodelete', 'dashboard', 'cli', 'ssh_connection', 'vscode_connection', 'jetbrains_connection',
  'task_auto_pause', 'task_manual_pause', 'task_resume');
CREATE TYPE provisioner_type AS ENUM ('echo', 'terraform');
CREATE TYPE provisioner_storage_method AS ENUM ('file');
CREATE TYPE provisioner_job_type AS ENUM ('template_version_import', 'workspace_build', 'template_version_dry_run');
CREATE TYPE provisioner_job_status AS ENUM ('pending', 'running', 'succeeded', 'canceling', 'canceled', 'failed', 'unknown');
CREATE TYPE automatic_updates AS ENUM ('always', 'never');
CREATE TYPE workspace_agent_lifecycle_state AS ENUM ('created', 'starting', 'start_timeout', 'start_error',
  'ready', 'shutting_down', 'shutdown_timeout', 'shutdown_error', 'off');
CREATE TYPE workspace_agent_subsystem AS ENUM ('envbuilder', 'envbox', 'none', 'exectrace');
CREATE TYPE display_app AS ENUM ('vscode', 'vscode_insiders', 'web_terminal', 'ssh_helper', 'port_forwarding_helper');
CREATE TYPE agent_key_scope_enum AS ENUM ('all', 'no_user_data');

CREATE TABLE users (
    id uuid PRIMARY KEY,
    email text NOT NULL,
    username text DEFAULT ''::text NOT NULL,
    hashed_password bytea NOT NULL,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL,
    status user_status DEFAULT 'dormant'::user_status NOT NULL,
    rbac_roles text[] DEFAULT '{}'::text[] NOT NULL,
    login_type login_type DEFAULT 'password'::login_type NOT NULL,
    avatar_url text DEFAULT ''::text NOT NULL,
    deleted boolean DEFAULT false NOT NULL,
    last_seen_at timestamp DEFAULT '0001-01-01 00:00:00'::timestamp NOT NULL,
    quiet_hours_schedule text DEFAULT ''::text NOT NULL,
    name text DEFAULT ''::text NOT NULL,
    github_com_user_id bigint,
    hashed_one_time_passcode bytea,
    one_time_passcode_expires_at timestamptz,
    is_system boolean DEFAULT false NOT NULL,
    is_service_account boolean DEFAULT false NOT NULL,
    chat_spend_limit_micros bigint
);
CREATE UNIQUE INDEX users_username_lower_idx ON users (lower(username)) WHERE deleted = false;

CREATE TABLE provisioner_jobs (
    id uuid PRIMARY KEY,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL,
    started_at timestamptz,
    canceled_at timestamptz,
    completed_at timestamptz,
    error text,
    organization_id uuid NOT NULL,
    initiator_id uuid NOT NULL,
    provisioner provisioner_type NOT NULL,
    storage_method provisioner_storage_method NOT NULL,
    type provisioner_job_type NOT NULL,
    input jsonb NOT NULL,
    worker_id uuid,
    file_id uuid NOT NULL,
    tags jsonb DEFAULT '{"scope": "organization"}'::jsonb NOT NULL,
    error_code text,
    trace_metadata jsonb,
    job_status provisioner_job_status GENERATED ALWAYS AS (
      CASE
        WHEN completed_at IS NOT NULL THEN
          CASE
            WHEN error <> '' THEN 'failed'::provisioner_job_status
            WHEN canceled_at IS NOT NULL THEN 'canceled'::provisioner_job_status
            ELSE 'succeeded'::provisioner_job_status
          END
        ELSE
          CASE
            WHEN error <> '' THEN 'failed'::provisioner_job_status
            WHEN canceled_at IS NOT NULL THEN 'canceling'::provisioner_job_status
            WHEN started_at IS NULL THEN 'pending'::provisioner_job_status
            ELSE 'running'::provisioner_job_status
          END
      END) STORED NOT NULL,
    logs_length integer DEFAULT 0 NOT NULL,
    logs_overflowed boolean DEFAULT false NOT NULL
);
CREATE INDEX idx_provisioner_jobs_status ON provisioner_jobs (job_status);

CREATE TABLE workspaces (
    id uuid PRIMARY KEY,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL,
    owner_id uuid NOT NULL,
    organization_id uuid NOT NULL,
    template_id uuid NOT NULL,
    deleted boolean DEFAULT false NOT NULL,
    name varchar(64) NOT NULL,
    autostart_schedule text,
    ttl bigint,
    last_used_at timestamptz DEFAULT '0001-01-01 00:00:00+00' NOT NULL,
    dormant_at timestamptz,
    deleting_at timestamptz,
    automatic_updates automatic_updates DEFAULT 'never'::automatic_updates NOT NULL,
    favorite boolean DEFAULT false NOT NULL,
    next_start_at timestamptz,
    group_acl jsonb DEFAULT '{}'::jsonb NOT NULL,
    user_acl jsonb DEFAULT '{}'::jsonb NOT NULL
);
CREATE UNIQUE INDEX workspaces_owner_id_lower_idx ON workspaces (owner_id, lower((name)::text)) WHERE deleted = false;

CREATE TABLE workspace_builds (
    id uuid PRIMARY KEY,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL,
    workspace_id uuid NOT NULL REFERENCES workspaces(id) ON DELETE CASCADE,
    template_version_id uuid NOT NULL,
    build_number integer NOT NULL,
    transition workspace_transition NOT NULL,
    initiator_id uuid NOT NULL,
    provisioner_state bytea,
    job_id uuid NOT NULL UNIQUE REFERENCES provisioner_jobs(id) ON DELETE CASCADE,
    deadline timestamptz DEFAULT '0001-01-01 00:00:00+00' NOT NULL,
    reason build_reason DEFAULT 'initiator'::build_reason NOT NULL,
    daily_cost integer DEFAULT 0 NOT NULL,
    max_deadline timestamptz DEFAULT '0001-01-01 00:00:00+00' NOT NULL,
    template_version_preset_id uuid,
    has_ai_task boolean,
    has_external_agent boolean,
    UNIQUE (workspace_id, build_number)
);
CREATE INDEX idx_workspace_builds_initiator_id ON workspace_builds (initiator_id);

CREATE TABLE workspace_resources (
    id uuid PRIMARY KEY,
    created_at timestamptz NOT NULL,
    job_id uuid NOT NULL REFERENCES provisioner_jobs(id) ON DELETE CASCADE,
    transition workspace_transition NOT NULL,
    type varchar(192) NOT NULL,
    name varchar(64) NOT NULL,
    hide boolean DEFAULT false NOT NULL,
    icon varchar(256) DEFAULT ''::varchar NOT NULL,
    instance_type varchar(256),
    daily_cost integer DEFAULT 0 NOT NULL,
    module_path text
);
CREATE INDEX workspace_resources_job_id_idx ON workspace_resources (job_id);

CREATE TABLE workspace_agents (
    id uuid PRIMARY KEY,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL,
    name varchar(64) NOT NULL,
    first_connected_at timestamptz,
    last_connected_at timestamptz,
    disconnected_at timestamptz,
    resource_id uuid NOT NULL REFERENCES workspace_resources(id) ON DELETE CASCADE,
    auth_token uuid NOT NULL,
    auth_instance_id varchar,
    architecture varchar(64) NOT NULL,
    environment_variables jsonb,
    operating_system varchar(64) NOT NULL,
    instance_metadata jsonb,
    resource_metadata jsonb,
    directory varchar(4096) DEFAULT '' NOT NULL,
    version text DEFAULT '' NOT NULL,
    last_connected_replica_id uuid,
    connection_timeout_seconds integer DEFAULT 0 NOT NULL,
    troubleshooting_url text DEFAULT '' NOT NULL,
    motd_file text DEFAULT '' NOT NULL,
    lifecycle_state workspace_agent_lifecycle_state DEFAULT 'created' NOT NULL,
    expanded_directory varchar(4096) DEFAULT '' NOT NULL,
    logs_length integer DEFAULT 0 NOT NULL,
    logs_overflowed boolean DEFAULT false NOT NULL,
    started_at timestamptz,
    ready_at timestamptz,
    subsystems workspace_agent_subsystem[] DEFAULT '{}',
    display_apps display_app[] DEFAULT '{vscode,vscode_insiders,web_terminal,ssh_helper,port_forwarding_helper}',
    api_version text DEFAULT '' NOT NULL,
    display_order integer DEFAULT 0 NOT NULL,
    parent_id uuid REFERENCES workspace_agents(id) ON DELETE CASCADE,
    api_key_scope agent_key_scope_enum DEFAULT 'all' NOT NULL,
    deleted boolean DEFAULT false NOT NULL
);
CREATE INDEX workspace_agents_auth_token_idx ON workspace_agents (auth_token);
CREATE INDEX workspace_agents_resource_id_idx ON workspace_agents (resource_id);

-- coderd seeds the prebuilds system user in a migration.
INSERT INTO users (id, email, username, hashed_password, created_at, updated_at, status, login_type, is_system)
VALUES ('c42fdf75-3097-471c-8c33-fb52454d81c0', 'prebuilds@system', 'prebuilds', '', now(), now(), 'active', 'none', true);
