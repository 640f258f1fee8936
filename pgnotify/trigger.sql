-- The trigger of github.com/tiercache/tiercache/pgnotify, as TriggerSQL
-- renders it for one table: every INSERT, UPDATE, DELETE and TRUNCATE of
-- the table sends, with pg_notify, the keys and groups it changed to the
-- Listeners of the channel, at the commit of its transaction (a write that
-- rolls back sends nothing).
--
--   INSERT    the NEW row's key and groups
--   UPDATE    the OLD row's and the NEW row's: a changed key, or a row moved
--             from one group to another, invalidates both
--   DELETE    the OLD row's
--   TRUNCATE  the whole namespace: {"ns": ..., "all": true}
--
-- A key is its column's ::text, which must equal the key's string form in
-- the cache (tier.Config.Key; an integer's decimal form by default). A
-- group is its prefix followed by its column's ::text. NULL and empty ones
-- are left out; duplicates are sent once. A payload that would reach
-- PostgreSQL's limit of 8000 bytes is replaced by the whole namespace, so
-- that no write fails for its notification. PostgreSQL 11 or later.
{{- /* Everything in double braces is filled in by TriggerSQL: names quoted
as identifiers, the namespace, the channel and the prefixes as string
literals, and a dollar-quote tag that none of them holds. */}}

CREATE OR REPLACE FUNCTION {{.Function}}() RETURNS trigger
LANGUAGE plpgsql AS {{.Tag}}
DECLARE
	tc_keys    text[] := '{}';
	tc_groups  text[] := '{}';
	tc_payload text;
BEGIN
	IF TG_OP = 'TRUNCATE' THEN
		PERFORM pg_notify({{.Channel}}, json_build_object('ns', {{.Namespace}}, 'all', true)::text);
		RETURN NULL;
	END IF;
	IF TG_OP IN ('UPDATE', 'DELETE') THEN
{{- if .Key}}
		tc_keys := tc_keys || OLD.{{.Key}}::text;
{{- end}}
{{- range .Groups}}
		tc_groups := tc_groups || ({{.Prefix}} || OLD.{{.Column}}::text);
{{- end}}
	END IF;
	IF TG_OP IN ('INSERT', 'UPDATE') THEN
{{- if .Key}}
		tc_keys := tc_keys || NEW.{{.Key}}::text;
{{- end}}
{{- range .Groups}}
		tc_groups := tc_groups || ({{.Prefix}} || NEW.{{.Column}}::text);
{{- end}}
	END IF;
	tc_keys := ARRAY(SELECT DISTINCT u.k FROM unnest(tc_keys) AS u(k) WHERE u.k <> '');
	tc_groups := ARRAY(SELECT DISTINCT u.g FROM unnest(tc_groups) AS u(g) WHERE u.g <> '');
	IF cardinality(tc_keys) = 0 AND cardinality(tc_groups) = 0 THEN
		RETURN NULL;
	END IF;
	tc_payload := json_build_object('ns', {{.Namespace}}, 'keys', tc_keys, 'groups', tc_groups)::text;
	IF octet_length(tc_payload) >= 8000 THEN
		tc_payload := json_build_object('ns', {{.Namespace}}, 'all', true)::text;
	END IF;
	PERFORM pg_notify({{.Channel}}, tc_payload);
	RETURN NULL;
END
{{.Tag}};

DROP TRIGGER IF EXISTS {{.Trigger}} ON {{.Table}};
CREATE TRIGGER {{.Trigger}}
	AFTER INSERT OR UPDATE OR DELETE ON {{.Table}}
	FOR EACH ROW EXECUTE FUNCTION {{.Function}}();

DROP TRIGGER IF EXISTS {{.TruncateTrigger}} ON {{.Table}};
CREATE TRIGGER {{.TruncateTrigger}}
	AFTER TRUNCATE ON {{.Table}}
	FOR EACH STATEMENT EXECUTE FUNCTION {{.Function}}();
