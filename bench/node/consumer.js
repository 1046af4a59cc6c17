'use strict';
/*
 * reliq benchmark baseline: a "seed-style" Node.js JetStream -> PostgreSQL
 * consumer.
 *
 * This is the baseline that scripts/bench measures reliq against. It imitates
 * the small service a team typically writes by hand: pull messages from a
 * durable JetStream pull consumer in batches, run one INSERT per message with
 * the `pg` package, and ack each message after its own INSERT has returned.
 * It is deliberately honest and typical, not optimised: no multi-row INSERT,
 * no COPY, no transaction batching, no pipelining beyond --concurrency.
 *
 * Usage:
 *   node consumer.js --nats nats://127.0.0.1:4222 \
 *     --pg postgresql://postgres@127.0.0.1:5432/postgres \
 *     --stream BENCH --consumer node_baseline --subject 'bench.>' \
 *     --fetch 10 --count 20000 [--table bench.events] [--concurrency 1]
 *
 *   --fetch N        batch size of each pull (max_messages), e.g. 10 or 100
 *   --count N        stop after N messages have been inserted and acked
 *   --table NAME     target table, default bench.events, expected shape:
 *                      CREATE TABLE bench.events
 *                        (id bigint, kind text, amount int, note text)
 *   --concurrency K  default 1: the messages of a batch are inserted one after
 *                    another. K > 1: up to K INSERTs in flight at once within
 *                    a batch, each message acked after its own INSERT. The pg
 *                    Pool has K connections.
 *
 * Messages are JSON: {"id":123,"kind":"order","amount":42,"note":"bench"}.
 * The durable consumer is created if it does not exist (explicit ack,
 * deliver all, filter --subject, max_ack_pending 1000).
 *
 * Output: exactly one line of JSON on stdout when done,
 *   {"count": N, "seconds": S, "msgs_per_second": R}
 * where the clock starts when the first message arrives (not at connect) and
 * stops after the last ack has been flushed to the server. Progress goes to
 * stderr every 5 s. Any error: message on stderr, exit code 1. If no message
 * arrives for 30 s the run fails.
 */

const { connect, AckPolicy, DeliverPolicy } = require('nats');
const { Pool } = require('pg');

const PROGRESS_EVERY_MS = 5000;
const IDLE_LIMIT_MS = 30000;
const FETCH_EXPIRES_MS = 2000;

function usage(msg) {
  if (msg) process.stderr.write(`node baseline: ${msg}\n`);
  (msg ? process.stderr : process.stdout).write(
    'usage: node consumer.js --nats URL --pg CONNSTRING --stream NAME ' +
      '--consumer NAME --subject FILTER --fetch N --count N ' +
      '[--table NAME] [--concurrency K]\n'
  );
  process.exit(msg ? 1 : 0);
}

function parseArgs(argv) {
  const known = new Set([
    'nats', 'pg', 'stream', 'consumer', 'subject',
    'fetch', 'count', 'table', 'concurrency',
  ]);
  const opts = {};
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === '-h' || arg === '--help') usage();
    if (!arg.startsWith('--')) usage(`unexpected argument: ${arg}`);
    let key = arg.slice(2);
    let value;
    const eq = key.indexOf('=');
    if (eq >= 0) {
      value = key.slice(eq + 1);
      key = key.slice(0, eq);
    } else {
      if (i + 1 >= argv.length) usage(`missing value for --${key}`);
      value = argv[++i];
    }
    if (!known.has(key)) usage(`unknown flag: --${key}`);
    opts[key] = value;
  }

  for (const k of ['nats', 'pg', 'stream', 'consumer', 'subject', 'fetch', 'count']) {
    if (opts[k] === undefined || opts[k] === '') usage(`--${k} is required`);
  }
  const posInt = (k, v) => {
    if (!/^[0-9]+$/.test(v) || Number(v) < 1) usage(`--${k} must be a positive integer`);
    return Number(v);
  };
  opts.fetch = posInt('fetch', opts.fetch);
  opts.count = posInt('count', opts.count);
  opts.concurrency = posInt('concurrency', opts.concurrency === undefined ? '1' : opts.concurrency);
  opts.table = opts.table === undefined ? 'bench.events' : opts.table;
  // The table name is spliced into the SQL text, so only accept plain
  // (optionally schema-qualified) identifiers.
  if (!/^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$/.test(opts.table)) {
    usage('--table must be a plain identifier, optionally schema-qualified');
  }
  return opts;
}

function fail(err) {
  const msg = err && err.message ? err.message : String(err);
  process.stderr.write(`node baseline: error: ${msg}\n`);
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
    max_ack_pending: 1000,
  });
}

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  const sql = `INSERT INTO ${opts.table} (id, kind, amount, note) VALUES ($1, $2, $3, $4)`;

  let acked = 0;
  let startedAt = null; // set when the first message arrives
  let lastMessageAt = Date.now();

  const pool = new Pool({ connectionString: opts.pg, max: opts.concurrency });
  pool.on('error', fail); // an idle client lost its connection

  const nc = await connect({ servers: opts.nats });
  nc.closed().then((err) => {
    if (err) fail(err);
  });

  const progress = setInterval(() => {
    process.stderr.write(`node baseline: ${acked}/${opts.count}\n`);
  }, PROGRESS_EVERY_MS);
  const watchdog = setInterval(() => {
    if (Date.now() - lastMessageAt > IDLE_LIMIT_MS) {
      fail(new Error(`no message arrived for ${IDLE_LIMIT_MS / 1000} s ` +
        `(${acked}/${opts.count} acked), giving up`));
    }
  }, 1000);

  const jsm = await nc.jetstreamManager();
  await ensureConsumer(jsm, opts);
  const js = nc.jetstream();
  const c = await js.consumers.get(opts.stream, opts.consumer);

  const insertAndAck = async (m) => {
    const row = m.json();
    await pool.query(sql, [row.id, row.kind, row.amount, row.note]);
    m.ack();
    acked++;
  };

  const onMessage = () => {
    lastMessageAt = Date.now();
    if (startedAt === null) startedAt = process.hrtime.bigint();
  };

  while (acked < opts.count) {
    // Never ask for more than is still needed to reach --count.
    const want = Math.min(opts.fetch, opts.count - acked);
    const batch = await c.fetch({ max_messages: want, expires: FETCH_EXPIRES_MS });

    if (opts.concurrency === 1) {
      for await (const m of batch) {
        onMessage();
        const row = m.json();
        await pool.query(sql, [row.id, row.kind, row.amount, row.note]);
        m.ack();
        acked++;
      }
    } else {
      // Up to K inserts in flight within this batch; each message is acked
      // as soon as its own insert has returned.
      const inflight = new Set();
      for await (const m of batch) {
        onMessage();
        while (inflight.size >= opts.concurrency) {
          await Promise.race(inflight);
        }
        const p = insertAndAck(m).then(
          () => { inflight.delete(p); },
          fail
        );
        inflight.add(p);
      }
      await Promise.all(inflight);
    }
  }

  await nc.flush(); // make sure the server has received the last acks
  const seconds = Number(process.hrtime.bigint() - startedAt) / 1e9;
  const rate = acked / seconds;

  clearInterval(progress);
  clearInterval(watchdog);
  process.stdout.write(
    `{"count": ${acked}, "seconds": ${seconds.toFixed(3)}, ` +
      `"msgs_per_second": ${rate.toFixed(1)}}\n`
  );

  await pool.end();
  await nc.drain();
}

main().catch(fail);
