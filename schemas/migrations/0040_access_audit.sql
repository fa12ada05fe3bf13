-- Access audit: who read or did what, to whose data, from where. Append-only for the application.
--
-- The table belongs to `pulsewire_audit`, a role nobody logs in as. The application gets INSERT and
-- SELECT only: the role that runs the migrations (and owns every other table) and the group
-- `pulsewire_app`. Not being the owner, a non-superuser application role can neither UPDATE,
-- DELETE nor TRUNCATE, nor drop or disable the trigger below; the trigger refuses the same
-- statements to a superuser too (the local stack's role is one), unless it is switched off on
-- purpose. Handing the table to another role needs a superuser: run this migration as one.
-- Roles belong to the cluster, not the database: create them once, quietly, if another database
-- of this cluster already did.

DO $$
BEGIN
    CREATE ROLE pulsewire_audit NOLOGIN;
EXCEPTION WHEN duplicate_object THEN NULL;
END $$;
DO $$
BEGIN
    CREATE ROLE pulsewire_app NOLOGIN;
EXCEPTION WHEN duplicate_object THEN NULL;
END $$;

CREATE TABLE access_audit (
    audit_id      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at            timestamptz NOT NULL DEFAULT clock_timestamp(),
    actor_user_id bigint,                -- no foreign key: the trail outlives accounts
    actor_label   text NOT NULL,         -- e-mail or name at the time, `cli:<user>` for the CLI
    org_id        bigint,
    role          text,
    credential    text,                  -- session | token:<first 12 hex of its hash> | password | cli
    action        text NOT NULL,         -- read | export | download | login | login_failed | token_use | admin:<what>
    object_type   text NOT NULL,
    object_id     text,
    owner_id      bigint,                -- the patient or driver whose data it concerns
    client_addr   text,
    detail        jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX access_audit_at ON access_audit (at DESC);
CREATE INDEX access_audit_owner ON access_audit (owner_id, at DESC) WHERE owner_id IS NOT NULL;
CREATE INDEX access_audit_actor ON access_audit (actor_user_id, at DESC);

CREATE FUNCTION access_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'access_audit is append-only: % refused', TG_OP USING ERRCODE = 'insufficient_privilege';
END $$;
CREATE TRIGGER access_audit_no_change BEFORE UPDATE OR DELETE ON access_audit
    FOR EACH ROW EXECUTE FUNCTION access_audit_append_only();
CREATE TRIGGER access_audit_no_truncate BEFORE TRUNCATE ON access_audit
    FOR EACH STATEMENT EXECUTE FUNCTION access_audit_append_only();

ALTER TABLE access_audit OWNER TO pulsewire_audit;
ALTER FUNCTION access_audit_append_only() OWNER TO pulsewire_audit;
REVOKE ALL ON access_audit FROM PUBLIC;
GRANT SELECT, INSERT ON access_audit TO pulsewire_app, CURRENT_USER;
