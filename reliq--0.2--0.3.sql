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

/*
 * reliq.take_over(name, force => false): refused on a stream whose
 * retention deletes acknowledged messages (interest, work queue) unless
 * forced.  Such a consumer cannot be brought back to this database's
 * position, so what the former owner acknowledged and this database lacks
 * is gone.  The wait before consuming is the longer of this cluster's
 * lease_ttl and the former owner's.
 */
CREATE FUNCTION reliq._stream_retention(stream text)
RETURNS text
LANGUAGE c STRICT AS 'MODULE_PATHNAME', 'reliq_stream_retention';
REVOKE ALL ON FUNCTION reliq._stream_retention(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION reliq._stream_retention(text) TO reliq_admin;

DROP FUNCTION reliq.take_over(text);
CREATE FUNCTION reliq.take_over(subscription_name text, force boolean DEFAULT false)
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    s reliq.subscription;
    retention text;
BEGIN
    IF pg_is_in_recovery() THEN
        RAISE EXCEPTION 'this server is a hot standby'
            USING ERRCODE = 'read_only_sql_transaction',
                  DETAIL = 'A standby consumes nothing; it takes over by itself once promoted.';
    END IF;
    IF current_setting('reliq.lease_ttl')::interval = interval '0' THEN
        RAISE EXCEPTION 'leases are off (reliq.lease_ttl = 0)'
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Without leases every cluster consumes; set reliq.lease_ttl to use them.';
    END IF;
    s := reliq._owned_subscription(take_over.subscription_name, 'take over');
    IF NOT take_over.force THEN
        retention := reliq._stream_retention(s.stream);
        IF retention IN ('interest', 'workqueue') THEN
            RAISE EXCEPTION 'stream "%" of subscription "%" has % retention: a take-over cannot bring its consumer back to this database''s position',
                            s.stream, s.subscription_name, retention
                USING ERRCODE = 'object_not_in_prerequisite_state',
                      DETAIL = 'The stream deletes what is acknowledged. This cluster would consume from where the former owner''s consumer stands: whatever the former owner acknowledged and this database has not applied is gone, and is never applied here.',
                      HINT = format('If that loss is accepted: SELECT reliq.take_over(%L, force => true);', s.subscription_name);
        END IF;
    END IF;
    PERFORM reliq._request_take_over(s.id);
    RETURN format('subscription %s: this cluster takes the lease of consumer %s at the next renewal and consumes once the former owner has stopped (%s later, or the former owner''s lease_ttl if longer)',
                  s.subscription_name, s.consumer, current_setting('reliq.lease_ttl'));
END
$$;
COMMENT ON FUNCTION reliq.take_over(text, boolean) IS 'Makes this cluster the owner of the subscription''s consumer; it consumes once the former owner has stopped (refused on interest or work-queue streams unless forced)';
REVOKE ALL ON FUNCTION reliq.take_over(text, boolean) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION reliq.take_over(text, boolean) TO PUBLIC;  -- checks membership itself
