--
-- setup: the extension and what it creates.  The temporary instance
-- preloads reliq and points it at a nats-server (test/with-nats).
--
CREATE EXTENSION reliq;
SELECT extname, extversion, extrelocatable FROM pg_extension WHERE extname = 'reliq';

SELECT c.relname, c.relkind
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = 'reliq' AND c.relkind IN ('r', 'v')
 ORDER BY 1;

SELECT p.proname, p.pronargs
  FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
 WHERE n.nspname = 'reliq' AND p.proname NOT LIKE '\_%'
 ORDER BY 1, 2;

SELECT rolname, rolcanlogin FROM pg_roles WHERE rolname = 'reliq_admin';

-- Settings (reliq.nats_url varies with the test's port).
SELECT name, setting, unit, context
  FROM pg_settings
 WHERE name LIKE 'reliq.%' AND name <> 'reliq.nats_url'
 ORDER BY name;

-- The secrets are superuser-only and never listed.
SELECT count(*) AS secrets_listed FROM pg_settings
 WHERE name IN ('reliq.nats_token', 'reliq.nats_password', 'reliq.nats_credentials_file');

-- Workers run in this database.
SELECT current_setting('reliq.database_name') = current_database() AS workers_here;

-- A stream for the tests; a second call updates it.
SELECT reliq.create_stream('REGRESS', ARRAY['regress.>']);
SELECT reliq.create_stream('REGRESS', ARRAY['regress.>', 'other.>']);

CREATE SCHEMA app;

-- Errors are shown with their SQLSTATE, detail and hint.
CREATE FUNCTION public.try(sql text) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    state text; message text; detail text; hint text;
BEGIN
    EXECUTE sql;
    RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS state = RETURNED_SQLSTATE, message = MESSAGE_TEXT,
                            detail = PG_EXCEPTION_DETAIL, hint = PG_EXCEPTION_HINT;
    RETURN state || ': ' || message
        || COALESCE(E'\nDETAIL: ' || NULLIF(detail, ''), '')
        || COALESCE(E'\nHINT: ' || NULLIF(hint, ''), '');
END
$$;

-- Waits until a condition holds (at most 30 s); returns whether it did.
CREATE FUNCTION public.wait_until(condition text) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    ok boolean;
BEGIN
    FOR i IN 1..300 LOOP
        EXECUTE 'SELECT ' || condition INTO ok;
        IF ok THEN RETURN true; END IF;
        PERFORM pg_sleep(0.1);
    END LOOP;
    RETURN false;
END
$$;
