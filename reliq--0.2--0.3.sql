/*
 * reliq 0.2 -> 0.3
 *
 * Every SQL change after the release of 0.2 lives here (and a fresh install
 * of 0.3 runs reliq--0.1.sql, reliq--0.1--0.2.sql, then this script).
 */
\echo Use "ALTER EXTENSION reliq UPDATE TO '0.3'" to load this file. \quit

/*
 * Every part of a JetStream ack subject, in the layout of nats-server 2.9
 * or the longer one of later servers (domain, account hash, a random
 * token); NULL when the subject is not one.  For tests and for debugging
 * by hand; the workers parse with the same C function.
 */
CREATE FUNCTION reliq._ack_subject(subject text,
    OUT domain text, OUT account_hash text, OUT stream text, OUT consumer text,
    OUT delivered integer, OUT stream_seq bigint, OUT consumer_seq bigint,
    OUT published_at timestamptz, OUT pending bigint, OUT token text)
RETURNS record
LANGUAGE c IMMUTABLE STRICT AS 'MODULE_PATHNAME', 'reliq_ack_subject_sql';
COMMENT ON FUNCTION reliq._ack_subject(text) IS 'The parts of a JetStream ack subject (either layout), or NULL';
REVOKE ALL ON FUNCTION reliq._ack_subject(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION reliq._ack_subject(text) TO reliq_admin, pg_monitor;
