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

/*
 * Table sink modes, keys and columns (issue 20)
 *
 * mode 'insert' (as before) or 'upsert': INSERT ... ON CONFLICT (key) DO
 * UPDATE of the columns a message names, one statement per batch; in
 * upsert mode a message with the header "reliq-op: delete" or an empty
 * payload deletes the row with its key.  key is resolved when the
 * subscription is created or altered (by default the target's primary
 * key) and stored.  columns fills columns from the message's subject
 * tokens, headers and metadata, in both modes.  newer_than (upsert mode)
 * names a column: a row is only updated by a message whose value of it is
 * at least the row's.  on_unknown_keys => 'dead_letter' fails a message
 * with a key the table has no column for (default 'ignore', as before).
 */
ALTER TABLE reliq.subscription
    ADD COLUMN mode    text NOT NULL DEFAULT 'insert',
    ADD COLUMN key     text[],
    ADD COLUMN columns jsonb,
    ADD COLUMN newer_than text,
    ADD COLUMN on_unknown_keys text NOT NULL DEFAULT 'ignore',
    ADD CONSTRAINT mode_valid CHECK (mode OPERATOR(pg_catalog.=) ANY (ARRAY['insert', 'upsert'])),
    ADD CONSTRAINT sink_settings CHECK (target IS NOT NULL
                                        OR (mode OPERATOR(pg_catalog.=) 'insert' AND key IS NULL AND columns IS NULL)),
    ADD CONSTRAINT upsert_has_key CHECK ((mode OPERATOR(pg_catalog.=) 'upsert') OPERATOR(pg_catalog.=) (key IS NOT NULL)),
    ADD CONSTRAINT newer_than_upsert CHECK (newer_than IS NULL OR mode OPERATOR(pg_catalog.=) 'upsert'),
    ADD CONSTRAINT on_unknown_keys_valid CHECK (on_unknown_keys OPERATOR(pg_catalog.=) ANY (ARRAY['ignore', 'dead_letter'])
                                                AND (target IS NOT NULL OR on_unknown_keys OPERATOR(pg_catalog.=) 'ignore'));
COMMENT ON COLUMN reliq.subscription.mode IS 'Table sink: ''insert'' (each message a new row) or ''upsert'' (insert or update by key; deletes)';
COMMENT ON COLUMN reliq.subscription.key IS 'Table sink in upsert mode: the key columns (a unique index of target has exactly these)';
COMMENT ON COLUMN reliq.subscription.newer_than IS 'Table sink in upsert mode: a row is only updated by a message whose value of this column is at least the row''s';
COMMENT ON COLUMN reliq.subscription.on_unknown_keys IS 'Table sink: a message key without a column is ''ignore''d, or fails the message (''dead_letter'')';
COMMENT ON COLUMN reliq.subscription.columns IS 'Table sink: columns filled from the message, {"column": "$subject[3]" | "$subject" | "$stream" | "$stream_seq" | "$published_at" | "$delivered" | "$header.Name"}';

-- Checks a table sink's mode, key and columns against its target; returns
-- the key to store (NULL in insert mode; the primary key by default).
CREATE FUNCTION reliq._check_sink(p_target regclass, p_owner regrole, p_mode text,
                                  p_key text[], p_columns jsonb)
RETURNS text[]
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_key    text[] := p_key;
    v_column text;
    v_expr   jsonb;
    v_hint   constant text := 'An expression is one of $subject, $subject[N] (tokens counted from 1), $stream, $stream_seq, $published_at, $delivered, $header.<name>.';
BEGIN
    IF p_mode IS NULL OR p_mode NOT IN ('insert', 'upsert') THEN
        RAISE EXCEPTION 'mode must be ''insert'' or ''upsert'', not %', quote_nullable(p_mode)
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = '''insert'' makes a new row of each message; ''upsert'' inserts or updates the row with the message''s key.';
    END IF;
    IF p_columns IS NOT NULL THEN
        IF jsonb_typeof(p_columns) <> 'object' THEN
            RAISE EXCEPTION 'columns must be a JSON object'
                USING ERRCODE = 'invalid_parameter_value',
                      DETAIL = 'Its keys name columns of the target; its values say where a column''s value comes from.',
                      HINT = 'For example: columns => ''{"order_id": "$subject[3]", "tenant": "$header.Tenant"}''::jsonb';
        END IF;
        FOR v_column, v_expr IN SELECT e.key, e.value FROM jsonb_each(p_columns) AS e LOOP
            IF NOT EXISTS (SELECT FROM pg_attribute a
                            WHERE a.attrelid = p_target AND a.attname = v_column AND a.attnum > 0
                              AND NOT a.attisdropped AND a.attgenerated = '' AND a.attidentity <> 'a') THEN
                RAISE EXCEPTION 'column "%" of columns is not a column of %', v_column, p_target
                    USING ERRCODE = 'undefined_column',
                          DETAIL = 'The keys of columns name columns of the target that an INSERT may set.',
                          HINT = format('The columns of %s are: %s.', p_target,
                                        (SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY a.attnum)
                                           FROM pg_attribute a
                                          WHERE a.attrelid = p_target AND a.attnum > 0 AND NOT a.attisdropped
                                            AND a.attgenerated = '' AND a.attidentity <> 'a'));
            END IF;
            IF jsonb_typeof(v_expr) <> 'string'
               OR (v_expr #>> '{}') !~ '^\$(subject(\[[1-9][0-9]{0,2}\])?|stream|stream_seq|published_at|delivered|header\.[!-9;-~]+)$' THEN
                RAISE EXCEPTION 'invalid expression % for column "%"', v_expr, v_column
                    USING ERRCODE = 'invalid_parameter_value',
                          HINT = v_hint;
            END IF;
        END LOOP;
    END IF;

    IF p_mode = 'insert' THEN
        IF p_key IS NOT NULL THEN
            RAISE EXCEPTION 'key applies to upsert mode only'
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = 'Add mode => ''upsert'', or leave key out.';
        END IF;
        RETURN NULL;
    END IF;

    IF v_key IS NULL THEN
        SELECT array_agg(a.attname::text ORDER BY k.n) INTO v_key
          FROM pg_index i
               CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, n)
               JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
         WHERE i.indrelid = p_target AND i.indisprimary AND k.n <= i.indnkeyatts;
        IF v_key IS NULL THEN
            RAISE EXCEPTION 'table % has no primary key', p_target
                USING ERRCODE = 'invalid_object_definition',
                      DETAIL = 'An upsert finds the row a message updates by a key: the target''s primary key unless key names other columns.',
                      HINT = format('Name the columns of a unique index: key => ARRAY[''id''], or add a primary key: ALTER TABLE %s ADD PRIMARY KEY (id);', p_target);
        END IF;
    END IF;
    IF cardinality(v_key) = 0 OR array_position(v_key, NULL) IS NOT NULL
       OR (SELECT count(DISTINCT x) FROM unnest(v_key) x) <> cardinality(v_key) THEN
        RAISE EXCEPTION 'key must name one or more distinct columns'
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'For example: key => ARRAY[''order_id''].';
    END IF;
    FOREACH v_column IN ARRAY v_key LOOP
        IF NOT EXISTS (SELECT FROM pg_attribute a
                        WHERE a.attrelid = p_target AND a.attname = v_column AND a.attnum > 0
                          AND NOT a.attisdropped AND a.attgenerated = '' AND a.attidentity <> 'a') THEN
            RAISE EXCEPTION 'key column "%" is not a column of %', v_column, p_target
                USING ERRCODE = 'undefined_column',
                      DETAIL = 'A key column is a column of the target that an INSERT may set (not generated, not GENERATED ALWAYS AS IDENTITY).';
        END IF;
    END LOOP;
    IF NOT EXISTS (SELECT FROM pg_index i
                    WHERE i.indrelid = p_target AND i.indisunique AND i.indimmediate
                      AND i.indpred IS NULL AND i.indexprs IS NULL
                      AND i.indnkeyatts = cardinality(v_key)
                      AND (SELECT array_agg(a.attname::text ORDER BY a.attname::text)
                             FROM unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, n)
                             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                            WHERE k.n <= i.indnkeyatts)
                          = (SELECT array_agg(x ORDER BY x) FROM unnest(v_key) x)) THEN
        RAISE EXCEPTION 'no unique index of % is on exactly the key columns (%)', p_target, array_to_string(v_key, ', ')
            USING ERRCODE = 'invalid_object_definition',
                  DETAIL = 'INSERT ... ON CONFLICT needs a unique index (not partial, not deferrable) on exactly the key''s columns to find a message''s row.',
                  HINT = format('CREATE UNIQUE INDEX ON %s (%s);', p_target,
                                (SELECT string_agg(quote_ident(x), ', ') FROM unnest(v_key) x));
    END IF;
    IF NOT has_table_privilege(p_owner, p_target, 'UPDATE')
       OR EXISTS (SELECT FROM unnest(v_key) x WHERE NOT has_column_privilege(p_owner, p_target, x, 'SELECT')) THEN
        RAISE EXCEPTION 'role % may not update %', p_owner, p_target
            USING ERRCODE = 'insufficient_privilege',
                  DETAIL = 'An upsert sink inserts and updates with the privileges of the subscription''s owner, reading the key columns (deletes need DELETE too).',
                  HINT = format('GRANT SELECT (%s), UPDATE, DELETE ON %s TO %s;',
                                (SELECT string_agg(quote_ident(x), ', ') FROM unnest(v_key) x), p_target, p_owner);
    END IF;
    RETURN v_key;
END
$$;
REVOKE ALL ON FUNCTION reliq._check_sink(regclass, regrole, text, text[], jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION reliq._check_sink(regclass, regrole, text, text[], jsonb) TO reliq_admin;

-- Checks newer_than: a column of the target, not of the key; upsert mode
-- only.
CREATE FUNCTION reliq._check_newer_than(p_target regclass, p_mode text, p_key text[], p_column text)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_type oid;
BEGIN
    IF p_column IS NULL THEN
        RETURN;
    END IF;
    IF p_mode <> 'upsert' THEN
        RAISE EXCEPTION 'newer_than applies to upsert mode only'
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Add mode => ''upsert'', or leave newer_than out.';
    END IF;
    SELECT a.atttypid INTO v_type FROM pg_attribute a
     WHERE a.attrelid = p_target AND a.attname = p_column AND a.attnum > 0 AND NOT a.attisdropped
       AND a.attgenerated = '' AND a.attidentity <> 'a';
    IF v_type IS NULL THEN
        RAISE EXCEPTION 'newer_than column "%" is not a column of %', p_column, p_target
            USING ERRCODE = 'undefined_column',
                  DETAIL = 'newer_than names the column (a version, a timestamp) that says which of two messages of a key is newer.';
    END IF;
    IF p_column = ANY (p_key) THEN
        RAISE EXCEPTION 'newer_than column "%" is a key column', p_column
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'newer_than names the column (a version, a timestamp) that says which of two messages of a key is newer.';
    END IF;
END
$$;
REVOKE ALL ON FUNCTION reliq._check_newer_than(regclass, text, text[], text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION reliq._check_newer_than(regclass, text, text[], text) TO reliq_admin;

CREATE FUNCTION reliq._check_on_unknown_keys(p_value text)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF p_value IS NULL OR p_value NOT IN ('ignore', 'dead_letter') THEN
        RAISE EXCEPTION 'on_unknown_keys must be ''ignore'' or ''dead_letter'', not %', quote_nullable(p_value)
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = '''ignore'' writes a message with keys the table has no column for, without them; ''dead_letter'' fails it (retried with the backoff, then a dead letter).';
    END IF;
END
$$;
REVOKE ALL ON FUNCTION reliq._check_on_unknown_keys(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION reliq._check_on_unknown_keys(text) TO reliq_admin;

/*
 * ordering (issue 20): 'none' (default); 'key' (the upsert key, its
 * columns taken from the subject or headers by columns); '$subject[N]';
 * '$header.Name'.  The messages of one order key are applied in stream
 * order, through failures and retries, by every worker of the
 * subscription (src/ordering.c, src/order_registry.c).
 */
ALTER TABLE reliq.subscription
    ADD COLUMN ordering text NOT NULL DEFAULT 'none',
    ADD CONSTRAINT ordering_valid CHECK (ordering OPERATOR(pg_catalog.=) ANY (ARRAY['none', 'key'])
                                         OR ordering OPERATOR(pg_catalog.~) '^\$subject\[[1-9][0-9]{0,3}\]$'
                                         OR ordering OPERATOR(pg_catalog.~) '^\$header\..+$');
COMMENT ON COLUMN reliq.subscription.ordering IS 'none, or the order key whose messages are applied in stream order through failures and retries: key (the upsert key, from the subject or headers), $subject[N], $header.Name';

-- Checks an ordering setting against the rest; returns what to store.
-- (p_concurrency: any; kept for the signature.)
CREATE FUNCTION reliq._check_ordering(p_ordering text, p_concurrency integer, p_target regclass,
                                      p_mode text, p_key text[], p_columns jsonb)
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_column text;
    v_expr   text;
BEGIN
    IF p_ordering IS NULL OR p_ordering = 'none' THEN
        RETURN 'none';
    END IF;
    IF p_ordering <> 'key' AND p_ordering !~ '^\$subject\[[1-9][0-9]{0,3}\]$' AND p_ordering !~ '^\$header\..+$' THEN
        RAISE EXCEPTION 'invalid ordering %', quote_literal(p_ordering)
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'ordering is ''none'', ''key'' (the upsert key), ''$subject[N]'' (the Nth token of the subject, from 1) or ''$header.Name''.';
    END IF;
    IF p_ordering = 'key' THEN
        IF p_target IS NULL OR p_mode IS DISTINCT FROM 'upsert' THEN
            RAISE EXCEPTION 'ordering => ''key'' orders by the upsert key: it needs a table sink in upsert mode'
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = 'Order by a subject token or a header instead: ordering => ''$subject[3]'' or ''$header.Name''.';
        END IF;
        FOREACH v_column IN ARRAY p_key LOOP
            v_expr := p_columns ->> v_column;
            IF v_expr IS NULL OR (v_expr !~ '^\$subject\[[1-9][0-9]{0,3}\]$' AND v_expr !~ '^\$header\..+$') THEN
                RAISE EXCEPTION 'ordering => ''key'' needs key column "%" taken from the subject or a header', v_column
                    USING ERRCODE = 'invalid_parameter_value',
                          DETAIL = 'reliq orders messages before it reads their payloads, so the key must come from the subject or the headers.',
                          HINT = format('Map it in columns, e.g. columns => ''{"%s": "$subject[3]"}'', or order by ''$subject[N]''.', v_column);
            END IF;
        END LOOP;
    END IF;
    RETURN p_ordering;
END
$$;
REVOKE ALL ON FUNCTION reliq._check_ordering(text, integer, regclass, text, text[], jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION reliq._check_ordering(text, integer, regclass, text, text[], jsonb) TO reliq_admin;

-- create_subscription and alter_subscription gain mode, key, columns,
-- newer_than, on_unknown_keys and ordering
DROP FUNCTION reliq.create_subscription(text, text, text, regprocedure, integer, integer, integer, interval[], interval, regclass, text, text, boolean, interval);
DROP FUNCTION reliq.alter_subscription(text, integer, integer, integer, interval[], interval, boolean, regprocedure, text, interval);

CREATE FUNCTION reliq.create_subscription(
    subscription_name text,
    stream            text,
    subject           text,
    handler           regprocedure DEFAULT NULL,
    batch_size        integer DEFAULT 100,
    concurrency       integer DEFAULT 1,
    max_deliver       integer DEFAULT 5,
    backoff           interval[] DEFAULT '{1s,10s,1min}',
    ack_wait          interval DEFAULT '30s',
    target            regclass DEFAULT NULL,
    consumer          text DEFAULT NULL,
    start             text DEFAULT 'all',
    enabled           boolean DEFAULT true,
    handler_timeout   interval DEFAULT NULL,
    mode              text DEFAULT 'insert',
    key               text[] DEFAULT NULL,
    columns           jsonb DEFAULT NULL,
    newer_than        text DEFAULT NULL,
    on_unknown_keys   text DEFAULT 'ignore',
    ordering          text DEFAULT 'none')
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_owner    regrole := current_user::regrole;
    v_consumer text := COALESCE(create_subscription.consumer, 'reliq_' || create_subscription.subscription_name);
    v_handler  text;
    v_key      text[];
    v_ordering text;
    v_id       bigint;
    c          record;
BEGIN
    PERFORM reliq._require_admin('create');
    IF create_subscription.subscription_name IS NULL
       OR create_subscription.subscription_name !~ '^[A-Za-z0-9_-]{1,48}$' THEN
        RAISE EXCEPTION 'invalid subscription name "%"', create_subscription.subscription_name
            USING ERRCODE = 'invalid_name',
                  DETAIL = 'A subscription name has 1 to 48 letters, digits, "_" or "-"; it names the durable consumer reliq_<name>.';
    END IF;
    IF v_consumer !~ '^[A-Za-z0-9_-]{1,64}$' THEN
        RAISE EXCEPTION 'invalid consumer name "%"', v_consumer
            USING ERRCODE = 'invalid_name',
                  DETAIL = 'A durable consumer name has 1 to 64 letters, digits, "_" or "-".';
    END IF;
    IF create_subscription.stream IS NULL OR create_subscription.subject IS NULL THEN
        RAISE EXCEPTION 'stream and subject are required'
            USING ERRCODE = 'null_value_not_allowed',
                  HINT = 'subject is the consumer''s filter subject; wildcards are allowed.';
    END IF;
    IF (create_subscription.handler IS NULL) = (create_subscription.target IS NULL) THEN
        RAISE EXCEPTION 'a subscription needs either a handler or a target, not both'
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'handler => ''app.on_event(reliq.message)''::regprocedure, or target => ''app.events''::regclass.';
    END IF;
    IF create_subscription.start IS NULL OR create_subscription.start NOT IN ('all', 'new') THEN
        RAISE EXCEPTION 'start must be ''all'' or ''new'', not %', quote_nullable(create_subscription.start)
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = '''all'' processes the stream from its first message, ''new'' from the next message published.';
    END IF;
    IF create_subscription.batch_size IS NULL OR create_subscription.concurrency IS NULL
       OR create_subscription.max_deliver IS NULL OR create_subscription.backoff IS NULL
       OR create_subscription.ack_wait IS NULL OR create_subscription.enabled IS NULL THEN
        RAISE EXCEPTION 'batch_size, concurrency, max_deliver, backoff, ack_wait and enabled must not be NULL'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    PERFORM reliq._check_settings(create_subscription.subscription_name,
                                  create_subscription.batch_size, create_subscription.concurrency,
                                  create_subscription.max_deliver, create_subscription.backoff,
                                  create_subscription.ack_wait, create_subscription.handler_timeout);
    IF create_subscription.handler IS NOT NULL THEN
        v_handler := reliq._check_handler(create_subscription.handler, v_owner);
        IF create_subscription.mode IS DISTINCT FROM 'insert' OR create_subscription.key IS NOT NULL
           OR create_subscription.columns IS NOT NULL OR create_subscription.newer_than IS NOT NULL
           OR create_subscription.on_unknown_keys IS DISTINCT FROM 'ignore' THEN
            RAISE EXCEPTION 'mode, key, columns, newer_than and on_unknown_keys apply to a table sink only'
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = 'Use target => ''app.orders''::regclass instead of a handler, or leave them out.';
        END IF;
    ELSE
        PERFORM reliq._check_target(create_subscription.target, v_owner);
        v_key := reliq._check_sink(create_subscription.target, v_owner, create_subscription.mode,
                                   create_subscription.key, create_subscription.columns);
        PERFORM reliq._check_newer_than(create_subscription.target, create_subscription.mode,
                                        v_key, create_subscription.newer_than);
        PERFORM reliq._check_on_unknown_keys(create_subscription.on_unknown_keys);
    END IF;
    v_ordering := reliq._check_ordering(create_subscription.ordering, create_subscription.concurrency,
                                        create_subscription.target, create_subscription.mode, v_key,
                                        create_subscription.columns);
    IF EXISTS (SELECT FROM reliq.subscription s WHERE s.subscription_name = create_subscription.subscription_name) THEN
        RAISE EXCEPTION 'subscription "%" already exists', create_subscription.subscription_name
            USING ERRCODE = 'duplicate_object',
                  HINT = 'Change it with reliq.alter_subscription, or drop it first with reliq.drop_subscription.';
    END IF;
    IF EXISTS (SELECT FROM reliq.subscription s
                WHERE s.stream = create_subscription.stream AND s.consumer = v_consumer) THEN
        RAISE EXCEPTION 'consumer "%" of stream "%" is already used by another subscription', v_consumer, create_subscription.stream
            USING ERRCODE = 'duplicate_object',
                  HINT = 'Name another durable consumer with the consumer argument.';
    END IF;

    SELECT * INTO c FROM reliq._ensure_consumer(create_subscription.stream, v_consumer, create_subscription.subject,
                                                create_subscription.ack_wait,
                                                reliq._max_ack_pending(create_subscription.batch_size,
                                                                       create_subscription.concurrency),
                                                create_subscription.start,
                                                'reliq subscription ' || create_subscription.subscription_name);
    IF NOT c.created THEN
        RAISE NOTICE 'durable consumer "%" already exists on stream "%": the subscription continues from its position',
            v_consumer, create_subscription.stream
            USING DETAIL = format('%s messages are pending and %s await acknowledgement.', c.num_pending, c.num_ack_pending);
    END IF;

    INSERT INTO reliq.subscription (subscription_name, stream, subject, consumer, handler, target,
                                    batch_size, concurrency, max_deliver, backoff, ack_wait,
                                    handler_timeout, start, enabled, owner, mode, key, columns, newer_than,
                                    on_unknown_keys, ordering)
    VALUES (create_subscription.subscription_name, create_subscription.stream, create_subscription.subject,
            v_consumer, v_handler, create_subscription.target,
            create_subscription.batch_size, create_subscription.concurrency, create_subscription.max_deliver,
            create_subscription.backoff, create_subscription.ack_wait, create_subscription.handler_timeout,
            create_subscription.start, create_subscription.enabled, v_owner,
            COALESCE(create_subscription.mode, 'insert'), v_key, create_subscription.columns,
            create_subscription.newer_than, COALESCE(create_subscription.on_unknown_keys, 'ignore'),
            v_ordering)
    RETURNING id INTO v_id;
    -- The subscription's position starts where its consumer stands now
    -- (see reliq._record_start).
    PERFORM reliq._record_start(v_id, c.stream_created, c.ack_floor);
    IF c.stream_retention IN ('interest', 'workqueue') THEN
        RAISE WARNING 'stream "%" has % retention: after a failover with asynchronous replication, messages acknowledged by the old primary but not yet on the standby cannot be delivered again',
            create_subscription.stream, c.stream_retention
            USING DETAIL = 'The stream deletes messages once acknowledged, so reliq cannot bring the consumer back to the new primary''s position.',
                  HINT = 'Use synchronous replication (synchronous_standby_names, synchronous_commit = on), or a stream with limits retention.';
    END IF;
    PERFORM reliq._warn_worker_budget();
    RETURN v_id;
END
$$;
COMMENT ON FUNCTION reliq.create_subscription(text, text, text, regprocedure, integer, integer, integer, interval[], interval, regclass, text, text, boolean, interval, text, text[], jsonb, text, text, text)
    IS 'Creates a subscription and its durable consumer; its workers start within a second';

CREATE FUNCTION reliq.alter_subscription(
    subscription_name text,
    batch_size        integer DEFAULT NULL,
    concurrency       integer DEFAULT NULL,
    max_deliver       integer DEFAULT NULL,
    backoff           interval[] DEFAULT NULL,
    ack_wait          interval DEFAULT NULL,
    enabled           boolean DEFAULT NULL,
    handler           regprocedure DEFAULT NULL,
    subject           text DEFAULT NULL,
    handler_timeout   interval DEFAULT NULL,
    mode              text DEFAULT NULL,
    key               text[] DEFAULT NULL,
    columns           jsonb DEFAULT NULL,
    newer_than        text DEFAULT NULL,
    on_unknown_keys   text DEFAULT NULL,
    ordering          text DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    s reliq.subscription;
    v_handler text;
    v_mode    text;
    v_key     text[];
    v_columns jsonb;
    v_newer   text;
    v_ordering text;
BEGIN
    s := reliq._owned_subscription(alter_subscription.subscription_name, 'alter');
    PERFORM reliq._check_settings(s.subscription_name,
                                  alter_subscription.batch_size, alter_subscription.concurrency,
                                  alter_subscription.max_deliver, alter_subscription.backoff,
                                  alter_subscription.ack_wait, alter_subscription.handler_timeout);
    IF alter_subscription.handler IS NOT NULL THEN
        IF s.target IS NOT NULL THEN
            RAISE EXCEPTION 'subscription "%" is a table sink', s.subscription_name
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = 'Drop it and create a subscription with a handler instead.';
        END IF;
        v_handler := reliq._check_handler(alter_subscription.handler, s.owner);
    END IF;
    -- a table sink's mode, key, columns, newer_than and on_unknown_keys:
    -- NULL = unchanged, columns => '{}' and newer_than => '' = none; insert
    -- mode drops key and newer_than
    v_mode := COALESCE(alter_subscription.mode, s.mode);
    v_columns := NULLIF(COALESCE(alter_subscription.columns, s.columns), '{}'::jsonb);
    v_newer := NULLIF(CASE WHEN v_mode = 'insert' THEN alter_subscription.newer_than
                           ELSE COALESCE(alter_subscription.newer_than, s.newer_than) END, '');
    IF s.target IS NULL THEN
        IF alter_subscription.mode IS NOT NULL OR alter_subscription.key IS NOT NULL
           OR alter_subscription.columns IS NOT NULL OR alter_subscription.newer_than IS NOT NULL
           OR alter_subscription.on_unknown_keys IS NOT NULL THEN
            RAISE EXCEPTION 'subscription "%" is not a table sink', s.subscription_name
                USING ERRCODE = 'invalid_parameter_value',
                      DETAIL = 'mode, key, columns, newer_than and on_unknown_keys apply to a table sink only.';
        END IF;
    ELSIF alter_subscription.mode IS NOT NULL OR alter_subscription.key IS NOT NULL
          OR alter_subscription.columns IS NOT NULL OR alter_subscription.newer_than IS NOT NULL THEN
        v_key := reliq._check_sink(s.target, s.owner, v_mode,
                                   CASE WHEN v_mode = 'insert' THEN alter_subscription.key
                                        ELSE COALESCE(alter_subscription.key, s.key) END,
                                   v_columns);
        PERFORM reliq._check_newer_than(s.target, v_mode, v_key, v_newer);
    ELSE
        v_key := s.key;
    END IF;
    IF alter_subscription.on_unknown_keys IS NOT NULL THEN
        PERFORM reliq._check_on_unknown_keys(alter_subscription.on_unknown_keys);
    END IF;
    v_ordering := reliq._check_ordering(COALESCE(alter_subscription.ordering, s.ordering),
                                        COALESCE(alter_subscription.concurrency, s.concurrency),
                                        s.target, v_mode, v_key, v_columns);

    IF alter_subscription.subject IS DISTINCT FROM NULL AND alter_subscription.subject <> s.subject
       OR alter_subscription.ack_wait IS DISTINCT FROM NULL AND alter_subscription.ack_wait <> s.ack_wait
       OR COALESCE(alter_subscription.batch_size, s.batch_size) <> s.batch_size
       OR COALESCE(alter_subscription.concurrency, s.concurrency) <> s.concurrency THEN
        PERFORM reliq._ensure_consumer(s.stream, s.consumer,
                                       COALESCE(alter_subscription.subject, s.subject),
                                       COALESCE(alter_subscription.ack_wait, s.ack_wait),
                                       reliq._max_ack_pending(COALESCE(alter_subscription.batch_size, s.batch_size),
                                                              COALESCE(alter_subscription.concurrency, s.concurrency)),
                                       s.start, 'reliq subscription ' || s.subscription_name);
    END IF;

    UPDATE reliq.subscription AS t
       SET batch_size      = COALESCE(alter_subscription.batch_size, t.batch_size),
           concurrency     = COALESCE(alter_subscription.concurrency, t.concurrency),
           max_deliver     = COALESCE(alter_subscription.max_deliver, t.max_deliver),
           backoff         = COALESCE(alter_subscription.backoff, t.backoff),
           ack_wait        = COALESCE(alter_subscription.ack_wait, t.ack_wait),
           enabled         = COALESCE(alter_subscription.enabled, t.enabled),
           handler         = COALESCE(v_handler, t.handler),
           subject         = COALESCE(alter_subscription.subject, t.subject),
           handler_timeout = CASE WHEN alter_subscription.handler_timeout IS NULL THEN t.handler_timeout
                                  WHEN alter_subscription.handler_timeout = '0'::interval THEN NULL
                                  ELSE alter_subscription.handler_timeout END,
           mode            = v_mode,
           key             = v_key,
           columns         = v_columns,
           newer_than      = v_newer,
           on_unknown_keys = COALESCE(alter_subscription.on_unknown_keys, t.on_unknown_keys),
           ordering        = v_ordering
     WHERE t.id = s.id;
    IF alter_subscription.concurrency IS NOT NULL OR alter_subscription.enabled THEN
        PERFORM reliq._warn_worker_budget();
    END IF;
END
$$;
COMMENT ON FUNCTION reliq.alter_subscription(text, integer, integer, integer, interval[], interval, boolean, regprocedure, text, interval, text, text[], jsonb, text, text, text)
    IS 'Changes a subscription; NULL leaves a setting unchanged; workers pick it up within a second, without restart';
REVOKE ALL ON FUNCTION reliq.create_subscription(text, text, text, regprocedure, integer, integer, integer, interval[], interval, regclass, text, text, boolean, interval, text, text[], jsonb, text, text, text),
                       reliq.alter_subscription(text, integer, integer, integer, interval[], interval, boolean, regprocedure, text, interval, text, text[], jsonb, text, text, text) FROM PUBLIC;
-- they check membership themselves, with a clearer error than EXECUTE's
GRANT EXECUTE ON FUNCTION reliq.create_subscription(text, text, text, regprocedure, integer, integer, integer, interval[], interval, regclass, text, text, boolean, interval, text, text[], jsonb, text, text, text),
                          reliq.alter_subscription(text, integer, integer, integer, interval[], interval, boolean, regprocedure, text, interval, text, text[], jsonb, text, text, text) TO reliq_admin, PUBLIC;

-- Whose fault a dead letter's error was (the rule is reliq_error_kind in
-- src/batch.c): 'message' (its data: data exceptions, constraint
-- violations, a handler's RAISE), 'subscription' (anything else: a missing
-- function or privilege), 'delivery_limit' (RQ001: its handling never
-- completed).  Transient errors (lock_timeout, deadlocks, serialization
-- failures) are never dead-lettered: their messages are held and retried.
ALTER TABLE reliq.dead_letter ADD COLUMN error_kind text;
UPDATE reliq.dead_letter
   SET error_kind = CASE WHEN sqlstate OPERATOR(pg_catalog.=) 'RQ001' THEN 'delivery_limit'
                         WHEN pg_catalog.left(sqlstate, 2) OPERATOR(pg_catalog.=) ANY (ARRAY['22', '23', 'P0']) THEN 'message'
                         WHEN pg_catalog.left(sqlstate, 2) OPERATOR(pg_catalog.=) '40' OR sqlstate OPERATOR(pg_catalog.=) '55P03' THEN 'transient'
                         ELSE 'subscription' END
 WHERE sqlstate IS NOT NULL;
COMMENT ON COLUMN reliq.dead_letter.error_kind IS 'Whose fault the error was: message (its data), subscription (anything else), delivery_limit (RQ001), or transient for rows from before 0.3';

-- The per-step profile of batches, while reliq.profile_batches is on
-- (superuser only); zeroed by reliq.subscription_stats_reset().
CREATE FUNCTION reliq.batch_profile(
    OUT subscription_name text, OUT step text, OUT batches bigint,
    OUT messages bigint, OUT wall_us double precision, OUT cpu_us double precision)
RETURNS SETOF record
LANGUAGE c AS 'MODULE_PATHNAME', 'reliq_batch_profile';
COMMENT ON FUNCTION reliq.batch_profile()
    IS 'Where batches'' time went, per subscription and step, in all since reliq.profile_batches was turned on: wall and worker CPU time (µs)';
REVOKE ALL ON FUNCTION reliq.batch_profile() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION reliq.batch_profile() TO reliq_admin, pg_monitor;

/*
 * A stream that lost its tail (issue 19, item 7)
 *
 * JetStream acknowledges a publish before it is on disk.  After an OS
 * crash a stream may lose its last messages and hand their sequences out
 * again to new messages; the ledger and the floor name messages by
 * sequence, so such a new message would be taken for a duplicate, acked
 * and never applied.  When the stream (the same incarnation) ends below
 * the highest sequence a subscription applied, the monitor (or a worker
 * meeting a duplicate) records it here: the subscription is in state
 * 'diverged', health() says down, and it consumes and acks nothing until
 * reliq.accept_stream_loss() moves its floor back to the stream's last
 * sequence.  The monitor then rewinds the consumer and deletes the row.
 */
CREATE TABLE reliq._stream_divergence (
    subscription_id bigint PRIMARY KEY,
    stream_created  bigint NOT NULL,
    stream_last_seq bigint NOT NULL,
    applied_seq     bigint NOT NULL,
    detected_at     timestamptz NOT NULL DEFAULT pg_catalog.now(),
    accepted_at     timestamptz,
    accepted_by     name
);
COMMENT ON TABLE reliq._stream_divergence IS 'Subscriptions whose stream lost its tail: stream_last_seq (the lowest last sequence seen) is below applied_seq (the highest this database applied); accepted by reliq.accept_stream_loss(), then forgotten once the consumer was rewound';
SELECT pg_catalog.pg_extension_config_dump('reliq._stream_divergence', '');

-- The state names gain 'diverged' (before 'standby': the metric
-- reliq_subscription_state lists the states before standby).  The view
-- reads them: it is replaced (not dropped, so that views of users on it
-- stay) by one that spells the three names it uses while the function is
-- made again, then by itself as it was.
CREATE OR REPLACE VIEW reliq.subscription_stats AS
SELECT s.subscription_name,
       s.enabled,
       CASE WHEN NOT s.enabled THEN n.paused
            WHEN pg_catalog.pg_is_in_recovery() THEN n.standby
            ELSE COALESCE(st.state, n.stopped) END AS state,
       COALESCE(st.workers, 0) AS workers,
       s.concurrency,
       s.batch_size,
       COALESCE(st.received, 0) AS received,
       COALESCE(st.processed, 0) AS processed,
       COALESCE(st.failed, 0) AS failed,
       COALESCE(st.retried, 0) AS retried,
       COALESCE(st.dead_lettered, 0) AS dead_lettered,
       COALESCE(st.duplicates, 0) AS duplicates,
       COALESCE(st.batches, 0) AS batches,
       COALESCE(st.slow_path_batches, 0) AS slow_path_batches,
       COALESCE(st.in_flight, 0) AS in_flight,
       st.pending,
       st.ack_pending,
       st.redelivered,
       st.ack_floor,
       st.max_ack_pending,
       st.last_error,
       st.last_error_at,
       st.last_failure_at,
       st.last_batch_at,
       COALESCE(st.messages_per_second, 0) AS messages_per_second,
       st.batch_p50,
       st.batch_p99,
       st.latency_p50,
       st.latency_p99,
       st.consumer_info_at,
       st.disconnected_since,
       COALESCE(st.lag_growing, false) AS lag_growing,
       st.stats_reset_at,
       s.stream,
       s.subject,
       s.consumer,
       l.lease_holder,
       l.lease_valid_until,
       l.stream_retention,
       CASE WHEN s.enabled AND NOT pg_catalog.pg_is_in_recovery()
                 AND COALESCE(st.workers, 0) OPERATOR(pg_catalog.<) s.concurrency
                 AND (l.workers_allowed OPERATOR(pg_catalog.<) s.concurrency OR l.start_refused)
            THEN pg_catalog.format('%s of %s workers running: %s',
                     COALESCE(st.workers, 0), s.concurrency,
                     CASE WHEN l.workers_allowed OPERATOR(pg_catalog.<) s.concurrency
                          THEN pg_catalog.format('concurrency is above reliq.max_workers (%s), the size of the worker pool; raise it and restart',
                                                 pg_catalog.current_setting('reliq.max_workers'))
                          ELSE pg_catalog.format('PostgreSQL refused to start more background workers; raise max_worker_processes (%s) and restart',
                                                 pg_catalog.current_setting('max_worker_processes')) END)
       END AS worker_shortfall
  FROM reliq.subscription s
 CROSS JOIN (SELECT 'paused'::text AS paused, 'standby'::text AS standby,
                    'stopped'::text AS stopped) n
  LEFT JOIN reliq._subscription_stats() st ON st.subscription_id OPERATOR(pg_catalog.=) s.id
  LEFT JOIN reliq._subscription_status() l ON l.subscription_id OPERATOR(pg_catalog.=) s.id;
DROP FUNCTION reliq._state_names();
CREATE FUNCTION reliq._state_names(
    OUT running text, OUT paused text, OUT stopped text, OUT failing text,
    OUT backing_off text, OUT disconnected text, OUT connecting text,
    OUT fenced text, OUT acquiring text, OUT diverged text, OUT standby text)
RETURNS record
LANGUAGE c IMMUTABLE PARALLEL SAFE AS 'MODULE_PATHNAME', 'reliq_state_names';
COMMENT ON FUNCTION reliq._state_names() IS 'The name of each subscription state, as reliq''s C code writes it';
REVOKE ALL ON FUNCTION reliq._state_names() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION reliq._state_names() TO reliq_admin, pg_monitor;

/*
 * A consumer per owner (issue 19): each acquisition of a subscription's
 * lease makes a consumer of its own, "<consumer>-r<revision>" (the first
 * owner keeps the durable name), so that a former owner's late acks land
 * on no consumer.  subscription_stats.consumer_in_use names it.
 */
CREATE FUNCTION reliq._consumers_in_use(OUT subscription_id bigint, OUT consumer_in_use text)
RETURNS SETOF record
LANGUAGE c AS 'MODULE_PATHNAME', 'reliq_consumers_in_use';
COMMENT ON FUNCTION reliq._consumers_in_use() IS 'The consumer each subscription''s lease holder made and its workers attach to';
REVOKE ALL ON FUNCTION reliq._consumers_in_use() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION reliq._consumers_in_use() TO reliq_admin, pg_monitor;

CREATE OR REPLACE VIEW reliq.subscription_stats AS
SELECT s.subscription_name,
       s.enabled,
       CASE WHEN NOT s.enabled THEN n.paused
            WHEN pg_catalog.pg_is_in_recovery() THEN n.standby
            ELSE COALESCE(st.state, n.stopped) END AS state,
       COALESCE(st.workers, 0) AS workers,
       s.concurrency,
       s.batch_size,
       COALESCE(st.received, 0) AS received,
       COALESCE(st.processed, 0) AS processed,
       COALESCE(st.failed, 0) AS failed,
       COALESCE(st.retried, 0) AS retried,
       COALESCE(st.dead_lettered, 0) AS dead_lettered,
       COALESCE(st.duplicates, 0) AS duplicates,
       COALESCE(st.batches, 0) AS batches,
       COALESCE(st.slow_path_batches, 0) AS slow_path_batches,
       COALESCE(st.in_flight, 0) AS in_flight,
       st.pending,
       st.ack_pending,
       st.redelivered,
       st.ack_floor,
       st.max_ack_pending,
       st.last_error,
       st.last_error_at,
       st.last_failure_at,
       st.last_batch_at,
       COALESCE(st.messages_per_second, 0) AS messages_per_second,
       st.batch_p50,
       st.batch_p99,
       st.latency_p50,
       st.latency_p99,
       st.consumer_info_at,
       st.disconnected_since,
       COALESCE(st.lag_growing, false) AS lag_growing,
       st.stats_reset_at,
       s.stream,
       s.subject,
       s.consumer,
       l.lease_holder,
       l.lease_valid_until,
       l.stream_retention,
       CASE WHEN s.enabled AND NOT pg_catalog.pg_is_in_recovery()
                 AND COALESCE(st.workers, 0) OPERATOR(pg_catalog.<) s.concurrency
                 AND (l.workers_allowed OPERATOR(pg_catalog.<) s.concurrency OR l.start_refused)
            THEN pg_catalog.format('%s of %s workers running: %s',
                     COALESCE(st.workers, 0), s.concurrency,
                     CASE WHEN l.workers_allowed OPERATOR(pg_catalog.<) s.concurrency
                          THEN pg_catalog.format('concurrency is above reliq.max_workers (%s), the size of the worker pool; raise it and restart',
                                                 pg_catalog.current_setting('reliq.max_workers'))
                          ELSE pg_catalog.format('PostgreSQL refused to start more background workers; raise max_worker_processes (%s) and restart',
                                                 pg_catalog.current_setting('max_worker_processes')) END)
       END AS worker_shortfall,
       COALESCE(c.consumer_in_use,
                CASE WHEN l.lease_state OPERATOR(pg_catalog.=) 'off' THEN s.consumer END) AS consumer_in_use
  FROM reliq.subscription s
 CROSS JOIN reliq._state_names() n
  LEFT JOIN reliq._subscription_stats() st ON st.subscription_id OPERATOR(pg_catalog.=) s.id
  LEFT JOIN reliq._subscription_status() l ON l.subscription_id OPERATOR(pg_catalog.=) s.id
  LEFT JOIN reliq._consumers_in_use() c ON c.subscription_id OPERATOR(pg_catalog.=) s.id;
COMMENT ON COLUMN reliq.subscription_stats.consumer_in_use IS 'The consumer on the server that the lease''s holder made and the workers attach to: the durable name (consumer) for the first owner, <consumer>-r<revision> after an owner change; NULL until the monitor knows';

/*
 * health(): a diverged subscription is down, with the figures and the
 * function that accepts the loss.
 */
CREATE OR REPLACE FUNCTION reliq.health(OUT subscription_name text, OUT status text, OUT reasons text[])
RETURNS SETOF record
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
SELECT s.subscription_name,
       CASE WHEN bool_or(r.level = 'down') THEN 'down'
            WHEN bool_or(r.level = 'degraded') THEN 'degraded'
            ELSE 'ok' END,
       COALESCE(array_agg(r.reason ORDER BY r.ord) FILTER (WHERE r.reason IS NOT NULL), '{}')
  FROM reliq.subscription_stats s
 CROSS JOIN reliq._state_names() n
  LEFT JOIN LATERAL (VALUES
      (0, s.state = n.standby, 'ok',
          'standby: this server is a hot standby; the subscription is consumed after promotion'),
      (1, NOT s.enabled, 'ok', n.paused),
      (2, s.enabled AND s.workers = 0 AND s.state NOT IN (n.standby, n.fenced, n.acquiring),
          'down', 'no worker running'),
      (3, s.state = n.failing, 'down',
          'systemic failure: ' || COALESCE(s.last_error, 'unknown error')),
      (4, s.disconnected_since < now() - current_setting('reliq.health_disconnect_timeout')::interval,
          'down', format('disconnected from NATS for %s', date_trunc('second', now() - s.disconnected_since))),
      (5, s.disconnected_since >= now() - current_setting('reliq.health_disconnect_timeout')::interval,
          'degraded', 'disconnected from NATS, reconnecting'),
      (6, s.state = n.backing_off, 'degraded',
          'backing off: ' || COALESCE(s.last_error, 'retrying')),
      (7, s.max_ack_pending > 0 AND s.ack_pending >= s.max_ack_pending, 'degraded',
          format('stalled: %s messages await acknowledgement, the consumer''s max_ack_pending', s.ack_pending)),
      (8, s.lag_growing AND s.state NOT IN (n.standby, n.fenced, n.acquiring, n.diverged), 'degraded',
          format('lag growing while nothing is processed (%s pending)', s.pending)),
      (9, s.enabled AND s.workers > 0 AND s.consumer_info_at
            < now() - 3 * current_setting('reliq.refresh_interval')::interval, 'degraded',
          format('no consumer information from the server since %s', s.consumer_info_at)),
      (10, s.state <> n.failing AND s.last_failure_at > now() - interval '1 minute', 'degraded',
          'messages failed in the last minute: ' || s.last_error),
      (11, s.state = n.fenced, 'down',
          format('fenced: another PostgreSQL cluster owns consumer %s (%s); to consume here instead: SELECT reliq.take_over(%L);',
                 s.consumer, COALESCE(s.lease_holder, 'unknown'), s.subscription_name)),
      (12, s.state = n.acquiring, 'degraded',
          format('acquiring the lease of consumer %s, held by %s; consuming once it has run out (reliq.lease_ttl)',
                 s.consumer, COALESCE(s.lease_holder, 'unknown'))),
      (14, s.worker_shortfall IS NOT NULL, CASE WHEN s.workers = 0 THEN 'down' ELSE 'degraded' END,
          'short of workers: ' || s.worker_shortfall),
      (15, s.state = n.diverged, 'down',
          COALESCE(s.last_error, format('diverged: stream %s lost its tail', s.stream))
          || format('; the stream''s last sequence is below what this database applied, so new messages at those sequences would be taken for duplicates; nothing is consumed meanwhile. If the loss is accepted: SELECT reliq.accept_stream_loss(%L); (with last_kept => the stream''s last old sequence, if new messages came before the loss was seen)',
                    s.subscription_name)),
      (13, s.stream_retention IN ('interest', 'workqueue'), 'ok',
          format('stream %s has %s retention: acknowledged messages are deleted, so after a failover with asynchronous replication what the standby had not received cannot be delivered again; use synchronous replication',
                 s.stream, s.stream_retention))
  ) AS r(ord, active, level, reason) ON r.active
 GROUP BY s.subscription_name
 ORDER BY s.subscription_name
$$;

/*
 * reliq.accept_stream_loss(name, last_kept => NULL): the stream lost its
 * tail, and the messages it no longer has are given up.  The floor moves
 * back to the stream's last sequence (the lowest seen while diverged, or
 * last_kept, lower, when new messages came before the loss was seen:
 * the operator tells where the stream's old history ends), the ledger
 * forgets the sequences above it (they name messages the stream no longer
 * has), so that the new messages at those sequences are applied; the
 * monitor rewinds the consumer to the floor at its next round and the
 * subscription consumes again.  Owner or superuser, as take_over.
 */
-- SECURITY DEFINER: reliq's bookkeeping tables are reliq's alone.  The
-- caller's right to the subscription is checked by accept_stream_loss,
-- and again here for the session's user.
CREATE FUNCTION reliq._accept_stream_loss(p_subscription_id bigint, p_last_kept bigint)
RETURNS text
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    s reliq.subscription;
    d reliq._stream_divergence;
    forgotten bigint;
    kept bigint;
BEGIN
    SELECT * INTO s FROM reliq.subscription v WHERE v.id = p_subscription_id;
    IF NOT FOUND OR NOT pg_has_role(session_user, s.owner, 'USAGE') THEN
        RAISE EXCEPTION 'must be owner of subscription % to accept the loss of its stream''s tail', p_subscription_id
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    SELECT * INTO d FROM reliq._stream_divergence v WHERE v.subscription_id = s.id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'subscription "%" is not diverged', s.subscription_name
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = format('Stream %s has not been seen to end below the highest sequence this database applied: there is no loss to accept.', s.stream),
                  HINT = 'reliq.subscription_stats shows state diverged when the stream lost its tail.';
    END IF;
    IF d.accepted_at IS NOT NULL THEN
        RAISE EXCEPTION 'the loss of stream "%"''s tail was accepted already for subscription "%"', s.stream, s.subscription_name
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = format('Accepted at %s by %s; the monitor rewinds the consumer within reliq.refresh_interval.', d.accepted_at, d.accepted_by),
                  HINT = format('SELECT state FROM reliq.subscription_stats WHERE subscription_name = %L; shows when it consumes again.', s.subscription_name);
    END IF;
    kept := COALESCE(p_last_kept, d.stream_last_seq);
    IF kept < 0 OR kept > d.stream_last_seq THEN
        RAISE EXCEPTION 'last_kept must be between 0 and %, not %', d.stream_last_seq, kept
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = format('Stream %s was seen to end at sequence %s at most after it lost its tail; the messages up to last_kept are the ones this database applied and the stream still has.', s.stream, d.stream_last_seq),
                  HINT = 'Leave last_kept out to take the lowest last sequence seen.';
    END IF;
    DELETE FROM reliq._ledger l
     WHERE l.subscription_id = s.id AND l.stream_created = d.stream_created
       AND l.stream_seq > kept;
    GET DIAGNOSTICS forgotten = ROW_COUNT;
    UPDATE reliq._stream_floor f
       SET ack_floor = kept, updated_at = now()
     WHERE f.subscription_id = s.id AND f.stream_created = d.stream_created
       AND f.ack_floor > kept;
    UPDATE reliq._stream_divergence v
       SET accepted_at = now(), accepted_by = session_user, stream_last_seq = kept
     WHERE v.subscription_id = s.id;
    RETURN format('subscription %s: stream %s ends at sequence %s; this database had applied up to %s. The floor is now %s (%s ledger rows above it forgotten); consumer %s starts again after it within reliq.refresh_interval, and new messages from sequence %s on are applied',
                  s.subscription_name, s.stream, kept, d.applied_seq,
                  kept, forgotten, s.consumer, kept + 1);
END
$$;
REVOKE ALL ON FUNCTION reliq._accept_stream_loss(bigint, bigint) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION reliq._accept_stream_loss(bigint, bigint) TO reliq_admin;

CREATE FUNCTION reliq.accept_stream_loss(subscription_name text, last_kept bigint DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    s reliq.subscription;
BEGIN
    IF pg_is_in_recovery() THEN
        RAISE EXCEPTION 'this server is a hot standby'
            USING ERRCODE = 'read_only_sql_transaction',
                  DETAIL = 'A standby consumes nothing; accept the loss on the primary.';
    END IF;
    s := reliq._owned_subscription(accept_stream_loss.subscription_name, 'accept the stream loss of');
    RETURN reliq._accept_stream_loss(s.id, accept_stream_loss.last_kept);
END
$$;
COMMENT ON FUNCTION reliq.accept_stream_loss(text, bigint) IS 'A diverged subscription (its stream lost its tail) accepts the loss: its floor moves back to the stream''s last sequence, so new messages at the sequences lost are applied';
REVOKE ALL ON FUNCTION reliq.accept_stream_loss(text, bigint) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION reliq.accept_stream_loss(text, bigint) TO PUBLIC;  -- checks membership and ownership itself
