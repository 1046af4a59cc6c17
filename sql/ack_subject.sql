--
-- ack_subject: the one parser of JetStream ack subjects (src/message.c),
-- which the workers use for a message's metadata and the inbox for sorting
-- deliveries to their consumer.  Both layouts, and what is not one.
-- Needs no nats-server; installs the extension and drops it at the end.
--
CREATE EXTENSION reliq;
\pset null '(null)'

-- nats-server 2.9: $JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<ns>.<pending>
SELECT * FROM reliq._ack_subject('$JS.ACK.EVENTS.reliq_x.3.1042.17.1700000000123456789.5');

-- later servers: domain ("_" = none) and account hash first, 11 tokens ...
SELECT * FROM reliq._ack_subject('$JS.ACK._.ACCHASH1.EVENTS.reliq_x.1.7.6.1700000000000000000.0');
-- ... or 12, with a random token at the end
SELECT * FROM reliq._ack_subject('$JS.ACK.hub.ACCHASH2.EVENTS.reliq_x.2.8.9.1700000000000000001.4.tokenxyz');
-- a token after those is ignored, as the NATS clients do
SELECT stream, consumer, stream_seq, token FROM reliq._ack_subject('$JS.ACK.hub.H.S.C.1.2.3.4.5.tok.future');
-- the largest numbers that fit
SELECT delivered, stream_seq, pending FROM reliq._ack_subject('$JS.ACK.S.C.2147483647.9223372036854775807.1.0.9223372036854775807');

-- the metadata a handler sees comes from the same parser
SELECT * FROM reliq._parse_ack_subject('$JS.ACK._.ACCHASH1.EVENTS.reliq_x.1.7.6.1700000000000000000.0');

-- not ack subjects: NULL
SELECT s AS subject, reliq._ack_subject(s) IS NULL AS rejected
  FROM unnest(ARRAY[
    '',
    '$JS.ACK',
    '$JS.ACK.',
    '_INBOX.abc.1.2',
    '$JS.API.CONSUMER.MSG.NEXT.S.C',
    '$JS.ACKS.S.C.1.2.3.4.5',
    '$js.ack.S.C.1.2.3.4.5',
    '$JS.ACK.S.C.1.2.3.4',                            -- 6 tokens
    '$JS.ACK.S.C.1.2.3.4.5.6',                        -- 8
    '$JS.ACK.D.H.S.C.1.2.3.4',                        -- 8, long layout short of one
    '$JS.ACK.S.C.1.2.3.4.5.6.7.8.9.10.11.12.13.14.15', -- 17: too long
    '$JS.ACK.S..1.2.3.4.5',                           -- empty consumer
    '$JS.ACK..C.1.2.3.4.5',                           -- empty stream
    '$JS.ACK.S.C.1.2.3.4.5.',                         -- empty last token
    '$JS.ACK.D..S.C.1.2.3.4.5',                       -- empty account hash
    '$JS.ACK.S.C.x.2.3.4.5',                          -- not a number
    '$JS.ACK.S.C.1.-2.3.4.5',                         -- negative
    '$JS.ACK.S.C.1.+2.3.4.5',
    '$JS.ACK.S.C.1. 2.3.4.5',
    '$JS.ACK.S.C.1.2.3.4.5x',
    '$JS.ACK.S.C.2147483648.2.3.4.5',                 -- delivered beyond integer
    '$JS.ACK.S.C.1.9223372036854775808.3.4.5',        -- beyond bigint
    '$JS.ACK.S.C.1.99999999999999999999999.3.4.5'
  ]) AS s;
SELECT reliq._ack_subject(NULL) IS NULL AS strict;

DROP EXTENSION reliq;
