'use strict';
/*
 * reliq benchmark, the strong peer: a Node.js JetStream -> PostgreSQL
 * consumer written the way a competent engineer would write it.
 *
 * Where consumer.js imitates the seed service (one INSERT and one ack per
 * message), this one does what reliq does, in Node:
 *
 *   - several loops (--loops, default 2) pull from one durable consumer,
 *     each with its own PostgreSQL connection;
 *   - each loop fetches a batch (--fetch, default 500) and applies it in ONE
 *     transaction: a dedup ledger of stream sequences
 *       INSERT INTO <ledger> (stream, seq) SELECT $1, unnest($2::bigint[])
 *       ON CONFLICT DO NOTHING RETURNING seq
 *     then, for the sequences that were fresh, a single
 *       INSERT INTO <table> SELECT * FROM jsonb_populate_recordset(NULL::<table>, $1)
 *     (both prepared once per connection), then COMMIT, and only then
 *     acks every message of the batch (a redelivery of a committed message
 *     is acked without a second row: exactly-once effects, as with reliq).
 *
 * Usage:
 *   node peer.js --nats nats://127.0.0.1:4222 \
 *     --pg postgresql://postgres@127.0.0.1:5432/postgres \
 *     --stream BENCH --consumer peer --subject bench.events \
 *     --count 100000 [--fetch 500] [--loops 2] \
 *     [--table bench.events] [--ledger bench.peer_ledger]
 *
 * The table's columns are filled from the JSON keys of the same names
 * (bench.events: id bigint, kind text, amount int, note text). The ledger
 * is created if missing: (stream text, seq bigint, PRIMARY KEY (stream, seq)).
 * The durable consumer is created if it does not exist (explicit ack,
 * deliver all, filter --subject, max_ack_pending --fetch x --loops, at
 * least 1000).
 *
 * A loop never asks for more messages than are still needed to reach
 * --count (counting what the other loops have asked for and not yet
 * acked), so that no pull waits for its expiry on a drained stream at the
 * end of the run.
 *
 * Output: one line of JSON on stdout when done,
 *   {"count": N, "seconds": S, "msgs_per_second": R, "batches": B}
 * the clock starting when the first message arrives and stopping after the
 * last ack has been flushed to the server. Progress on stderr every 5 s.
 * Any error: message on stderr, exit code 1; no message for 30 s fails too.
 */

const { connect, AckPolicy, DeliverPolicy } = require('nats');
const { Pool } = require('pg');

const PROGRESS_EVERY_MS = 5000;
const IDLE_LIMIT_MS = 30000;
const FETCH_EXPIRES_MS = 2000;

function usage(msg) {
  if (msg) process.stderr.write(`node peer: ${msg}\n`);
  (msg ? process.stderr : process.stdout).write(
    'usage: node peer.js --nats URL --pg CONNSTRING --stream NAME ' +
      '--consumer NAME --subject FILTER --count N [--fetch N] [--loops K] ' +
      '[--table NAME] [--ledger NAME]\n'
  );
  process.exit(msg ? 1 : 0);
}

function parseArgs(argv) {
  const known = new Set([
    'nats', 'pg', 'stream', 'consumer', 'subject',
    'fetch', 'count', 'loops', 'table', 'ledger',
  ]);
  const opts = {};
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === '-h' || arg === '--help') usage();
    if (!arg.startsWith('--')) usage(`unexpected argument: ${arg}`);
    const key = arg.slice(2);
    if (!known.has(key)) usage(`unknown flag: --${key}`);
    if (i + 1 >= argv.length) usage(`missing value for --${key}`);
    opts[key] = argv[++i];
  }
  for (const k of ['nats', 'pg', 'stream', 'consumer', 'subject', 'count']) {
    if (opts[k] === undefined || opts[k] === '') usage(`--${k} is required`);
  }
  const posInt = (k, v) => {
    if (!/^[0-9]+$/.test(v) || Number(v) < 1) usage(`--${k} must be a positive integer`);
    return Number(v);
  };
  opts.count = posInt('count', opts.count);
  opts.fetch = posInt('fetch', opts.fetch === undefined ? '500' : opts.fetch);
  opts.loops = posInt('loops', opts.loops === undefined ? '2' : opts.loops);
  opts.table = opts.table === undefined ? 'bench.events' : opts.table;
  opts.ledger = opts.ledger === undefined ? 'bench.peer_ledger' : opts.ledger;
  // Both names are spliced into the SQL text: plain identifiers only.
  const ident = /^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$/;
  if (!ident.test(opts.table)) usage('--table must be a plain identifier, optionally schema-qualified');
  if (!ident.test(opts.ledger)) usage('--ledger must be a plain identifier, optionally schema-qualified');
  return opts;
}

function fail(err) {
  const msg = err && err.message ? err.message : String(err);
  process.stderr.write(`node peer: error: ${msg}\n`);
  process.exit(1);
}

async function ensureConsumer(jsm, opts) {
  try {
    await jsm.consumers.info(opts.stream, opts.consumer);
    return; // exists already: use it as it is
  } catch (err) {
    const notFound = err && err.api_error && err.api_error.err_code === 10014;
    if (!notFound) throw err;
  }
  await jsm.consumers.add(opts.stream, {
    durable_name: opts.consumer,
    ack_policy: AckPolicy.Explicit,
    deliver_policy: DeliverPolicy.All,
    filter_subject: opts.subject,
    max_ack_pending: Math.max(1000, opts.fetch * opts.loops),
  });
}

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  const claimSql =
    `INSERT INTO ${opts.ledger} (stream, seq) SELECT $1, unnest($2::bigint[]) ` +
    'ON CONFLICT DO NOTHING RETURNING seq';
  const insertSql =
    `INSERT INTO ${opts.table} SELECT * FROM jsonb_populate_recordset(NULL::${opts.table}, $1::jsonb)`;

  let acked = 0;
  let asked = 0; // messages the loops have asked for and not yet acked
  let batches = 0;
  let startedAt = null;
  let lastMessageAt = Date.now();

  const pool = new Pool({ connectionString: opts.pg, max: opts.loops });
  pool.on('error', fail);
  await pool.query(
    `CREATE TABLE IF NOT EXISTS ${opts.ledger} ` +
      '(stream text NOT NULL, seq bigint NOT NULL, PRIMARY KEY (stream, seq))'
  );

  const nc = await connect({ servers: opts.nats });
  nc.closed().then((err) => {
    if (err) fail(err);
  });
  const jsm = await nc.jetstreamManager();
  await ensureConsumer(jsm, opts);
  const js = nc.jetstream();
  const c = await js.consumers.get(opts.stream, opts.consumer);

  const progress = setInterval(() => {
    process.stderr.write(`node peer: ${acked}/${opts.count}\n`);
  }, PROGRESS_EVERY_MS);
  const watchdog = setInterval(() => {
    if (Date.now() - lastMessageAt > IDLE_LIMIT_MS) {
      fail(new Error(`no message arrived for ${IDLE_LIMIT_MS / 1000} s ` +
        `(${acked}/${opts.count} acked), giving up`));
    }
  }, 1000);

  async function loop() {
    const client = await pool.connect();
    try {
      for (;;) {
        const want = Math.min(opts.fetch, opts.count - acked - asked);
        if (want <= 0) {
          if (acked >= opts.count) return;
          // the other loops hold what is left: wait for them
          await new Promise((resolve) => setTimeout(resolve, 5));
          continue;
        }
        // What this loop asked for counts as asked until it is acked.
        asked += want;
        const msgs = [];
        const batch = await c.fetch({ max_messages: want, expires: FETCH_EXPIRES_MS });
        for await (const m of batch) {
          if (startedAt === null) startedAt = process.hrtime.bigint();
          lastMessageAt = Date.now();
          msgs.push(m);
        }
        if (msgs.length === 0) {
          asked -= want;
          continue;
        }

        await client.query('BEGIN');
        try {
          const fresh = await client.query({
            name: 'claim', text: claimSql, values: [opts.stream, msgs.map((m) => m.seq)],
          });
          const isFresh = new Set(fresh.rows.map((r) => Number(r.seq)));
          const docs = [];
          for (const m of msgs) {
            if (isFresh.has(m.seq)) docs.push(m.string());
          }
          if (docs.length > 0) {
            await client.query({
              name: 'insert', text: insertSql, values: ['[' + docs.join(',') + ']'],
            });
          }
          await client.query('COMMIT');
        } catch (err) {
          await client.query('ROLLBACK').catch(() => {});
          throw err;
        }
        for (const m of msgs) m.ack();
        acked += msgs.length;
        asked -= want;
        batches++;
      }
    } finally {
      client.release();
    }
  }

  const loops = [];
  for (let i = 0; i < opts.loops; i++) loops.push(loop());
  await Promise.all(loops);

  await nc.flush(); // the server has received the last acks
  const seconds = Number(process.hrtime.bigint() - startedAt) / 1e9;
  clearInterval(progress);
  clearInterval(watchdog);
  process.stdout.write(
    `{"count": ${acked}, "seconds": ${seconds.toFixed(3)}, ` +
      `"msgs_per_second": ${(acked / seconds).toFixed(1)}, "batches": ${batches}}\n`
  );
  await pool.end();
  await nc.drain();
}

main().catch(fail);
