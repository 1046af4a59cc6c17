/*-------------------------------------------------------------------------
 *
 * natstool.c
 *	  Small NATS / JetStream command-line client used by reliq's tests, demo
 *	  and benchmark to feed JetStream and to talk to the JetStream API from
 *	  outside PostgreSQL.
 *
 * Usage:
 *	natstool [--url URL] [--timeout MS] COMMAND ARGS...
 *
 *	URL may list several servers, comma-separated (a cluster, as in
 *	reliq.nats_url); the client connects to any and reconnects to any.
 *
 *	publish SUBJECT [--count N] [--start K] [--payload FMT] [--msg-id FMT]
 *		(SUBJECT may be a FMT too: 'orders.%d')
 *			[--header KEY=VALUE]... [--rate R] [--retry-for SECONDS]
 *		JetStream-publishes N messages with indexes K..K+N-1 and waits until
 *		every one of them has been acknowledged by JetStream (PubAck).  A
 *		message that times out, gets "no responders", an API error, or is
 *		lost in a disconnection / server restart is sent again, unchanged
 *		(same Nats-Msg-Id, so the server de-duplicates it), until it is
 *		acknowledged or --retry-for seconds have passed since its first
 *		attempt.  Prints "published N" to stdout at the end.
 *
 *	request SUBJECT [DATA] [--count N] [--start K]
 *		Core NATS request; prints the reply payload and a newline to stdout.
 *		With --count, DATA is a FMT and N requests are made for the indexes
 *		K..K+N-1, one reply line each (e.g. '$JS.API.STREAM.MSG.GET.S' with
 *		'{"seq":%d}').
 *
 *	drain STREAM CONSUMER --count N [--batch B]
 *		The NATS-only ceiling of the benchmark: pulls from an existing
 *		durable pull consumer in batches of B (default 100), the way a reliq
 *		worker does (the next pull is asked for before the batch in hand is
 *		acknowledged), acks every message by publishing "+ACK" to its reply
 *		subject with one flush per batch, and stops after N messages.
 *		Prints "drained N in S s" (the clock starts at the first message).
 *		No database work at all.
 *
 * FMT is a printf-like format in which "%d" (at most once) is replaced by
 * the message index and "%%" by "%"; no other conversion is allowed.
 *
 * Publishing is asynchronous (js_PublishMsgAsync) with at most
 * PUB_WINDOW messages in flight.  The library's per-message MaxWait timer
 * reports lost PubAcks as NATS_TIMEOUT through the ack handler; failed
 * messages are handed back to the main thread, which resends them only
 * while the connection is up (so that retries do not pile up in the
 * reconnect buffer).  Without --msg-id, a retry after a lost PubAck can
 * store a message twice.
 *
 * Exit status: 0 success; 1 failure (timeout, no responders, retries
 * exhausted, connection failure); 2 usage error; 3 (request only) the
 * reply was a bare status message such as "404 No Messages" (the status
 * is printed to stderr).
 *
 * Build: cc -Wall -Wextra -O2 -o natstool natstool.c -lnats
 *
 *-------------------------------------------------------------------------
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <nats/nats.h>

#define DEFAULT_URL		"nats://127.0.0.1:4222"
#define DEFAULT_PAYLOAD	"{\"id\":%d}"
#define PUB_WINDOW		256		/* max JetStream publishes in flight */

#define EXIT_FAIL		1
#define EXIT_USAGE		2
#define EXIT_STATUS		3

static const char *opt_url = DEFAULT_URL;
static int64_t opt_timeout = 2000;
static const char *opt_token = NULL;
static const char *opt_user = NULL;
static const char *opt_password = NULL;
static const char *opt_creds = NULL;
static const char *opt_tls_ca = NULL;
static const char *opt_tls_cert = NULL;
static const char *opt_tls_key = NULL;
static volatile bool closing = false;	/* quiet the callbacks at exit */

#define Min64(a, b) ((a) < (b) ? (a) : (b))

/* ----------------------------------------------------------------
 * Helpers
 * ----------------------------------------------------------------
 */

static void
usage(void)
{
	fprintf(stderr,
			"usage: natstool [--url URL] [--timeout MS] [--token T] [--user U --password P]\n"
			"                [--creds FILE] [--tls-ca FILE] [--tls-cert FILE --tls-key FILE]\n"
			"                COMMAND ARGS...\n"
			"  publish SUBJECT [--count N] [--start K] [--payload FMT] [--msg-id FMT]\n"
			"          [--header KEY=VALUE]... [--rate R] [--retry-for SECONDS]\n"
			"  request SUBJECT [DATA] [--count N] [--start K]\n"
			"  drain STREAM CONSUMER --count N [--batch B]\n"
			"  send SUBJECT [DATA]   (core NATS, no reply)\n"
			"URL defaults to %s, MS (per request) to 2000.\n"
			"FMT: printf-like, at most one %%d (the message index), %%%% for %%.\n",
			DEFAULT_URL);
	exit(EXIT_USAGE);
}

/* Print "natstool: WHAT: <status text> (<last error>)" to stderr. */
static void
report(const char *what, natsStatus s)
{
	const char *last = nats_GetLastError(NULL);

	if (last != NULL && last[0] != '\0')
		fprintf(stderr, "natstool: %s: %s (%s)\n", what, natsStatus_GetText(s),
				last);
	else
		fprintf(stderr, "natstool: %s: %s\n", what, natsStatus_GetText(s));
}

static void
fatal_status(const char *what, natsStatus s)
{
	report(what, s);
	exit(EXIT_FAIL);
}

static int64_t
parse_int(const char *opt, const char *val, int64_t min)
{
	char	   *end;
	long long	v;

	errno = 0;
	v = strtoll(val, &end, 10);
	if (errno != 0 || end == val || *end != '\0' || v < min)
	{
		fprintf(stderr, "natstool: invalid value for %s: \"%s\"\n", opt, val);
		exit(EXIT_USAGE);
	}
	return (int64_t) v;
}

static double
parse_double(const char *opt, const char *val)
{
	char	   *end;
	double		v;

	errno = 0;
	v = strtod(val, &end);
	if (errno != 0 || end == val || *end != '\0' || v < 0)
	{
		fprintf(stderr, "natstool: invalid value for %s: \"%s\"\n", opt, val);
		exit(EXIT_USAGE);
	}
	return v;
}

/*
 * Check that FMT contains at most one "%d" and otherwise only "%%".
 */
static void
check_format(const char *opt, const char *fmt)
{
	int			nd = 0;
	const char *p;

	for (p = fmt; *p; p++)
	{
		if (*p != '%')
			continue;
		if (p[1] == '%')
			p++;
		else if (p[1] == 'd')
		{
			nd++;
			p++;
		}
		else
		{
			fprintf(stderr,
					"natstool: %s: only %%d and %%%% are allowed in \"%s\"\n",
					opt, fmt);
			exit(EXIT_USAGE);
		}
	}
	if (nd > 1)
	{
		fprintf(stderr, "natstool: %s: at most one %%d is allowed in \"%s\"\n",
				opt, fmt);
		exit(EXIT_USAGE);
	}
}

/*
 * Expand a (checked) FMT for index idx; returns a malloc'd string and its
 * length in *len.
 */
static char *
format_index(const char *fmt, int64_t idx, int *len)
{
	size_t		cap = strlen(fmt) + 32;
	char	   *buf = malloc(cap);
	char	   *o = buf;
	const char *p;

	if (buf == NULL)
	{
		fprintf(stderr, "natstool: out of memory\n");
		exit(EXIT_FAIL);
	}
	for (p = fmt; *p; p++)
	{
		if (*p == '%' && p[1] == '%')
		{
			*o++ = '%';
			p++;
		}
		else if (*p == '%' && p[1] == 'd')
		{
			o += sprintf(o, "%" PRId64, idx);
			p++;
		}
		else
			*o++ = *p;
	}
	*o = '\0';
	*len = (int) (o - buf);
	return buf;
}

static void
on_disconnected(natsConnection *nc, void *closure)
{
	(void) nc;
	(void) closure;
	if (!closing)
		fprintf(stderr, "natstool: disconnected\n");
}

static void
on_reconnected(natsConnection *nc, void *closure)
{
	(void) nc;
	(void) closure;
	fprintf(stderr, "natstool: reconnected\n");
}

/*
 * Connect to opt_url.  With retry_until > 0 (a nats_Now() deadline), keep
 * trying until then; otherwise a single attempt.  The connection reconnects
 * forever; the callers bound their own waits.
 */
static natsConnection *
connect_nats(int64_t retry_until, bool verbose_reconnect)
{
	natsOptions *opts = NULL;
	natsConnection *nc = NULL;
	natsStatus	s;
	bool		warned = false;

	s = natsOptions_Create(&opts);
	if (s == NATS_OK)
	{
		/*
		 * URL may be a comma-separated list (a cluster), as reliq.nats_url:
		 * the client connects to one of them and reconnects to any.
		 */
		char	   *urls = strdup(opt_url);
		const char *servers[64];
		int			nservers = 0;
		char	   *saveptr = NULL;
		char	   *tok;

		if (urls == NULL)
		{
			fprintf(stderr, "natstool: out of memory\n");
			exit(EXIT_FAIL);
		}
		for (tok = strtok_r(urls, ", ", &saveptr);
			 tok != NULL && nservers < 64;
			 tok = strtok_r(NULL, ", ", &saveptr))
			servers[nservers++] = tok;
		if (nservers <= 1)
			s = natsOptions_SetURL(opts, opt_url);
		else
			s = natsOptions_SetServers(opts, servers, nservers);
		/* the options keep their own copies */
		free(urls);
	}
	if (s == NATS_OK)
		s = natsOptions_SetTimeout(opts, opt_timeout);	/* connect timeout */
	if (s == NATS_OK)
		s = natsOptions_SetMaxReconnect(opts, -1);
	if (s == NATS_OK)
		s = natsOptions_SetReconnectWait(opts, 100);
	if (s == NATS_OK)
		s = natsOptions_SetReconnectJitter(opts, 100, 100);
	if (s == NATS_OK)
		s = natsOptions_SetPingInterval(opts, 1000);
	if (s == NATS_OK)
		s = natsOptions_SetMaxPingsOut(opts, 3);
	if (s == NATS_OK && verbose_reconnect)
		s = natsOptions_SetDisconnectedCB(opts, on_disconnected, NULL);
	if (s == NATS_OK && verbose_reconnect)
		s = natsOptions_SetReconnectedCB(opts, on_reconnected, NULL);
	if (s == NATS_OK && opt_token)
		s = natsOptions_SetToken(opts, opt_token);
	if (s == NATS_OK && opt_user)
		s = natsOptions_SetUserInfo(opts, opt_user, opt_password);
	if (s == NATS_OK && opt_creds)
		s = natsOptions_SetUserCredentialsFromFiles(opts, opt_creds, NULL);
	if (s == NATS_OK && (opt_tls_ca || opt_tls_cert))
		s = natsOptions_SetSecure(opts, true);
	if (s == NATS_OK && opt_tls_ca)
		s = natsOptions_LoadCATrustedCertificates(opts, opt_tls_ca);
	if (s == NATS_OK && opt_tls_cert)
		s = natsOptions_LoadCertificatesChain(opts, opt_tls_cert, opt_tls_key);
	if (s != NATS_OK)
		fatal_status("cannot set connection options", s);

	for (;;)
	{
		s = natsConnection_Connect(&nc, opts);
		if (s == NATS_OK)
			break;
		if (retry_until <= 0 || nats_Now() >= retry_until)
		{
			char		what[512];

			snprintf(what, sizeof(what), "cannot connect to %s", opt_url);
			fatal_status(what, s);
		}
		if (!warned)
		{
			char		what[512];

			snprintf(what, sizeof(what), "cannot connect to %s yet, retrying",
					 opt_url);
			report(what, s);
			warned = true;
		}
		nats_Sleep(200);
	}
	natsOptions_Destroy(opts);
	return nc;
}

/* ----------------------------------------------------------------
 * publish
 * ----------------------------------------------------------------
 */

typedef enum
{
	SLOT_FREE = 0,
	SLOT_INFLIGHT,				/* owned by the library, PubAck awaited */
	SLOT_RETRY					/* owned by us, to be sent again at due_ms */
} SlotState;

typedef struct
{
	SlotState	state;
	natsMsg    *msg;
	int64_t		index;
	int64_t		first_ms;		/* time of the first attempt */
	int64_t		due_ms;			/* SLOT_RETRY: earliest resend time */
	int			attempts;
} PubSlot;

typedef struct
{
	pthread_mutex_t mu;
	pthread_cond_t cond;
	PubSlot		slots[PUB_WINDOW];
	int			nfree;
	int64_t		acked;
	int64_t		duplicates;
	int64_t		retries;
	int64_t		retry_for_ms;
	bool		failed;
	char		failmsg[512];
	char		lasterr[256];
	int64_t		lasterr_ms;		/* last time an error was printed */
} PubState;

static PubState ps;

static PubSlot *
find_slot(natsMsg *msg)
{
	int			i;

	for (i = 0; i < PUB_WINDOW; i++)
		if (ps.slots[i].msg == msg && ps.slots[i].state != SLOT_FREE)
			return &ps.slots[i];
	return NULL;
}

/*
 * A message failed (PubAck error, timeout, or could not be sent); we own
 * it again.  Called with ps.mu held.
 */
static void
slot_failed(PubSlot *slot, natsStatus err, int errcode, const char *errtext)
{
	int64_t		now = nats_Now();
	int64_t		backoff;

	/* The library sets ErrText to the status text when there is no more. */
	if (errtext != NULL && strcmp(errtext, natsStatus_GetText(err)) == 0)
		errtext = NULL;

	slot->state = SLOT_RETRY;
	ps.retries++;

	/* Print the first error and then at most one per second. */
	if (now - ps.lasterr_ms >= 1000)
	{
		fprintf(stderr,
				"natstool: message %" PRId64 " not acknowledged (attempt %d): %s%s%s, retrying\n",
				slot->index, slot->attempts,
				natsStatus_GetText(err),
				errtext && errtext[0] ? ": " : "",
				errtext ? errtext : "");
		ps.lasterr_ms = now;
	}
	snprintf(ps.lasterr, sizeof(ps.lasterr), "%s%s%s (jsErrCode %d)",
			 natsStatus_GetText(err),
			 errtext && errtext[0] ? ": " : "",
			 errtext ? errtext : "", errcode);

	if (now - slot->first_ms >= ps.retry_for_ms)
	{
		if (!ps.failed)
			snprintf(ps.failmsg, sizeof(ps.failmsg),
					 "message %" PRId64 " not acknowledged after %d attempts in %" PRId64 " ms: %s",
					 slot->index, slot->attempts, now - slot->first_ms,
					 ps.lasterr);
		ps.failed = true;
	}

	/* A timeout has already waited; otherwise back off a little. */
	if (err == NATS_TIMEOUT)
		backoff = 0;
	else
		backoff = slot->attempts < 10 ? 50 * slot->attempts : 500;
	slot->due_ms = now + backoff;
}

/*
 * Ack handler, runs in the library's thread for the reply subscription.
 * With an AckHandler the library hands the message back to us in every
 * case: we destroy it on success and keep it for a resend on failure.
 */
static void
on_puback(jsCtx *js, natsMsg *msg, jsPubAck *pa, jsPubAckErr *pae,
		  void *closure)
{
	PubSlot    *slot;

	(void) js;
	(void) closure;

	pthread_mutex_lock(&ps.mu);
	slot = find_slot(msg);
	if (slot == NULL)
	{
		/* cannot happen: every message we send is in a slot */
		pthread_mutex_unlock(&ps.mu);
		fprintf(stderr, "natstool: PubAck for an unknown message\n");
		natsMsg_Destroy(msg);
		return;
	}
	if (pa != NULL)
	{
		ps.acked++;
		if (pa->Duplicate)
			ps.duplicates++;
		slot->state = SLOT_FREE;
		slot->msg = NULL;
		ps.nfree++;
		natsMsg_Destroy(msg);
	}
	else
		slot_failed(slot,
					pae ? pae->Err : NATS_ERR,
					pae ? (int) pae->ErrCode : 0,
					pae ? pae->ErrText : NULL);
	pthread_cond_broadcast(&ps.cond);
	pthread_mutex_unlock(&ps.mu);
}

/* Wait on ps.cond for at most ms milliseconds; ps.mu held. */
static void
wait_ms(int64_t ms)
{
	struct timespec ts;

	if (ms <= 0)
		return;
	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_sec += ms / 1000;
	ts.tv_nsec += (ms % 1000) * 1000000L;
	if (ts.tv_nsec >= 1000000000L)
	{
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000L;
	}
	pthread_cond_timedwait(&ps.cond, &ps.mu, &ts);
}

/*
 * Hand a slot's message to the library.  Called with ps.mu held; releases
 * it around the call, since the ack may be processed (by on_puback) before
 * js_PublishMsgAsync returns.
 */
static void
send_slot(jsCtx *js, PubSlot *slot)
{
	jsPubOptions po;
	natsMsg    *m = slot->msg;
	natsStatus	s;

	jsPubOptions_Init(&po);
	po.MaxWait = opt_timeout;	/* library reports NATS_TIMEOUT after that */

	slot->state = SLOT_INFLIGHT;
	slot->attempts++;
	pthread_mutex_unlock(&ps.mu);
	s = js_PublishMsgAsync(js, &m, &po);
	pthread_mutex_lock(&ps.mu);

	/*
	 * On failure the library did not take the message and will never call
	 * on_puback for this attempt, so the slot is still ours.
	 */
	if (s != NATS_OK)
	{
		const char *last = nats_GetLastError(NULL);

		slot_failed(slot, s, 0, last);
	}
}

static int
cmd_publish(int argc, char **argv)
{
	const char *subject;
	int64_t		count = 1;
	int64_t		start = 0;
	const char *payload_fmt = DEFAULT_PAYLOAD;
	const char *msgid_fmt = NULL;
	double		rate = 0;
	int64_t		retry_for = 120;
	char	  **hdr_keys;
	char	  **hdr_vals;
	int			nhdrs = 0;
	int			i;
	natsConnection *nc;
	jsCtx	   *js = NULL;
	jsOptions	jo;
	natsStatus	s;
	int64_t		next;			/* next new index offset (0..count) */
	int64_t		t0;

	if (argc < 1)
		usage();
	subject = argv[0];
	hdr_keys = calloc(argc, sizeof(char *));
	hdr_vals = calloc(argc, sizeof(char *));
	if (hdr_keys == NULL || hdr_vals == NULL)
	{
		fprintf(stderr, "natstool: out of memory\n");
		return EXIT_FAIL;
	}

	for (i = 1; i < argc; i++)
	{
		const char *a = argv[i];

		if (i + 1 >= argc)
		{
			fprintf(stderr, "natstool: publish: missing value or unknown argument \"%s\"\n", a);
			usage();
		}
		if (strcmp(a, "--count") == 0)
			count = parse_int(a, argv[++i], 0);
		else if (strcmp(a, "--start") == 0)
			start = parse_int(a, argv[++i], INT64_MIN);
		else if (strcmp(a, "--payload") == 0)
			payload_fmt = argv[++i];
		else if (strcmp(a, "--msg-id") == 0)
			msgid_fmt = argv[++i];
		else if (strcmp(a, "--rate") == 0)
			rate = parse_double(a, argv[++i]);
		else if (strcmp(a, "--retry-for") == 0)
			retry_for = parse_int(a, argv[++i], 0);
		else if (strcmp(a, "--header") == 0)
		{
			char	   *kv = strdup(argv[++i]);
			char	   *eq = kv ? strchr(kv, '=') : NULL;

			if (eq == NULL || eq == kv)
			{
				fprintf(stderr, "natstool: --header wants KEY=VALUE, got \"%s\"\n",
						argv[i]);
				return EXIT_USAGE;
			}
			*eq = '\0';
			hdr_keys[nhdrs] = kv;
			hdr_vals[nhdrs] = eq + 1;
			nhdrs++;
		}
		else
		{
			fprintf(stderr, "natstool: publish: unknown argument \"%s\"\n", a);
			usage();
		}
	}
	check_format("--payload", payload_fmt);
	if (msgid_fmt != NULL)
		check_format("--msg-id", msgid_fmt);

	memset(&ps, 0, sizeof(ps));
	pthread_mutex_init(&ps.mu, NULL);
	pthread_cond_init(&ps.cond, NULL);
	ps.nfree = PUB_WINDOW;
	ps.retry_for_ms = retry_for * 1000;

	t0 = nats_Now();
	nc = connect_nats(t0 + retry_for * 1000, true);

	s = jsOptions_Init(&jo);
	if (s == NATS_OK)
	{
		jo.Wait = opt_timeout;
		jo.PublishAsync.MaxPending = 0; /* we bound the window ourselves */
		jo.PublishAsync.AckHandler = on_puback;
		s = natsConnection_JetStream(&js, nc, &jo);
	}
	if (s != NATS_OK)
		fatal_status("cannot create JetStream context", s);

	t0 = nats_Now();
	next = 0;
	pthread_mutex_lock(&ps.mu);
	while (ps.acked < count && !ps.failed)
	{
		int64_t		now = nats_Now();
		int64_t		wait = 100;
		PubSlot    *retry = NULL;
		PubSlot    *slot;
		bool		connected;

		/* Only send while connected; see the header comment. */
		pthread_mutex_unlock(&ps.mu);
		connected = (natsConnection_Status(nc) == NATS_CONN_STATUS_CONNECTED);
		pthread_mutex_lock(&ps.mu);
		now = nats_Now();

		/* Pick the retry that is due first; check retry deadlines. */
		for (i = 0; i < PUB_WINDOW; i++)
		{
			slot = &ps.slots[i];
			if (slot->state != SLOT_RETRY)
				continue;
			if (now - slot->first_ms >= ps.retry_for_ms)
			{
				snprintf(ps.failmsg, sizeof(ps.failmsg),
						 "message %" PRId64 " not acknowledged after %d attempts in %" PRId64 " ms: %s",
						 slot->index, slot->attempts, now - slot->first_ms,
						 ps.lasterr[0] ? ps.lasterr : "not connected");
				ps.failed = true;
				break;
			}
			if (retry == NULL || slot->due_ms < retry->due_ms)
				retry = slot;
		}
		if (ps.failed)
			break;

		if (!connected)
		{
			wait_ms(50);
			continue;
		}

		if (retry != NULL && retry->due_ms <= now)
		{
			send_slot(js, retry);
			continue;
		}
		if (retry != NULL)
			wait = retry->due_ms - now;

		if (next < count && ps.nfree > 0)
		{
			int64_t		due = 0;

			if (rate > 0)
				due = t0 + (int64_t) ((double) next * 1000.0 / rate);
			if (due <= now)
			{
				int64_t		idx = start + next;
				char	   *data;
				int			len;
				natsMsg    *m = NULL;

				for (i = 0; i < PUB_WINDOW; i++)
					if (ps.slots[i].state == SLOT_FREE)
						break;
				slot = &ps.slots[i];

				data = format_index(payload_fmt, idx, &len);
				if (strstr(subject, "%d") != NULL)
				{
					int			slen;
					char	   *subj = format_index(subject, idx, &slen);

					s = natsMsg_Create(&m, subj, NULL, data, len);
					free(subj);
				}
				else
					s = natsMsg_Create(&m, subject, NULL, data, len);
				free(data);
				if (s == NATS_OK && msgid_fmt != NULL)
				{
					char	   *id = format_index(msgid_fmt, idx, &len);

					s = natsMsgHeader_Set(m, "Nats-Msg-Id", id);
					free(id);
				}
				for (int h = 0; s == NATS_OK && h < nhdrs; h++)
					s = natsMsgHeader_Add(m, hdr_keys[h], hdr_vals[h]);
				if (s != NATS_OK)
					fatal_status("cannot build message", s);

				slot->msg = m;
				slot->index = idx;
				slot->attempts = 0;
				slot->first_ms = now;
				ps.nfree--;
				next++;
				send_slot(js, slot);
				continue;
			}
			if (due - now < wait)
				wait = due - now;
		}
		wait_ms(wait);
	}

	if (ps.failed)
	{
		fprintf(stderr, "natstool: publish failed: %s\n", ps.failmsg);
		pthread_mutex_unlock(&ps.mu);
		/* Skip the orderly cleanup: messages may still be in flight. */
		fflush(stdout);
		_exit(EXIT_FAIL);
	}
	if (ps.retries > 0 || ps.duplicates > 0)
		fprintf(stderr,
				"natstool: %" PRId64 " acknowledged, %" PRId64 " retries, %" PRId64 " acknowledged as duplicates\n",
				ps.acked, ps.retries, ps.duplicates);
	pthread_mutex_unlock(&ps.mu);

	printf("published %" PRId64 "\n", ps.acked);
	fflush(stdout);

	closing = true;
	jsCtx_Destroy(js);
	natsConnection_Destroy(nc);
	nats_Close();
	return 0;
}

/* ----------------------------------------------------------------
 * request
 * ----------------------------------------------------------------
 */

#define REQ_WINDOW		256		/* requests in flight with --count */

/*
 * If m is a bare status message (no payload, "Status" header), report it
 * and return the exit status to use; else return 0.
 */
static int
check_status_reply(const char *subject, natsMsg *m)
{
	const char *status = NULL;
	const char *desc = NULL;

	if (natsMsg_GetDataLength(m) != 0
		|| natsMsgHeader_Get(m, "Status", &status) != NATS_OK
		|| status == NULL)
		return 0;
	natsMsgHeader_Get(m, "Description", &desc);
	if (strcmp(status, "503") == 0)
	{
		fprintf(stderr, "natstool: request to \"%s\" failed: no responders\n",
				subject);
		return EXIT_FAIL;
	}
	fprintf(stderr, "natstool: request to \"%s\": status reply %s%s%s\n",
			subject, status, desc ? " " : "", desc ? desc : "");
	return EXIT_STATUS;
}

static void
print_reply(natsMsg *m)
{
	fwrite(natsMsg_GetData(m), 1, natsMsg_GetDataLength(m), stdout);
	fputc('\n', stdout);
}

/* One request, the plain way. */
static int
request_one(natsConnection *nc, const char *subject, const char *data)
{
	natsMsg    *reply = NULL;
	natsStatus	s;
	int			rc;

	s = natsConnection_Request(&reply, nc, subject, data, (int) strlen(data),
							   opt_timeout);
	if (s != NATS_OK)
	{
		char		what[512];

		snprintf(what, sizeof(what), "request to \"%s\" failed", subject);
		fatal_status(what, s);
	}
	rc = check_status_reply(subject, reply);
	if (rc == 0)
		print_reply(reply);
	natsMsg_Destroy(reply);
	return rc;
}

/*
 * count requests with data FMT expanded for start..start+count-1, up to
 * REQ_WINDOW in flight, each with its own reply subject <inbox>.<offset>;
 * replies are printed in index order.  Each request must be answered
 * within opt_timeout of being sent.
 */
static int
request_many(natsConnection *nc, const char *subject, const char *fmt,
			 int64_t start, int64_t count)
{
	natsInbox  *inbox = NULL;
	natsSubscription *sub = NULL;
	natsMsg    *ring[REQ_WINDOW];
	int64_t		sent_ms[REQ_WINDOW];
	int64_t		next_send = 0;
	int64_t		next_print = 0;
	size_t		inbox_len;
	char	   *wild;
	natsStatus	s;
	int			rc = 0;

	memset(ring, 0, sizeof(ring));
	s = natsInbox_Create(&inbox);
	if (s != NATS_OK)
		fatal_status("cannot create inbox", s);
	inbox_len = strlen(inbox);
	wild = malloc(inbox_len + 3);
	if (wild == NULL)
	{
		fprintf(stderr, "natstool: out of memory\n");
		return EXIT_FAIL;
	}
	sprintf(wild, "%s.*", inbox);
	s = natsConnection_SubscribeSync(&sub, nc, wild);
	if (s == NATS_OK)
		s = natsSubscription_SetPendingLimits(sub, -1, -1);
	if (s != NATS_OK)
		fatal_status("cannot subscribe to the reply inbox", s);

	while (next_print < count && rc == 0)
	{
		natsMsg    *m = NULL;
		int64_t		remaining;
		const char *subj;
		const char *dot;
		char	   *end;
		long long	k;

		/* keep the window full */
		while (next_send < count && next_send - next_print < REQ_WINDOW)
		{
			char		reply[256];
			char	   *body;
			int			len;

			snprintf(reply, sizeof(reply), "%s.%" PRId64, inbox, next_send);
			body = format_index(fmt, start + next_send, &len);
			s = natsConnection_PublishRequest(nc, subject, reply, body, len);
			free(body);
			if (s != NATS_OK)
			{
				char		what[512];

				snprintf(what, sizeof(what), "request to \"%s\" failed",
						 subject);
				fatal_status(what, s);
			}
			sent_ms[next_send % REQ_WINDOW] = nats_Now();
			next_send++;
		}

		/* print what is complete, in order */
		if (ring[next_print % REQ_WINDOW] != NULL)
		{
			m = ring[next_print % REQ_WINDOW];
			ring[next_print % REQ_WINDOW] = NULL;
			rc = check_status_reply(subject, m);
			if (rc == 0)
				print_reply(m);
			natsMsg_Destroy(m);
			next_print++;
			continue;
		}

		remaining = sent_ms[next_print % REQ_WINDOW] + opt_timeout - nats_Now();
		if (remaining <= 0)
		{
			fprintf(stderr,
					"natstool: request to \"%s\" failed: timeout (no reply within %" PRId64 " ms for index %" PRId64 ")\n",
					subject, opt_timeout, start + next_print);
			rc = EXIT_FAIL;
			break;
		}
		s = natsSubscription_NextMsg(&m, sub, remaining);
		if (s == NATS_TIMEOUT)
			continue;
		if (s != NATS_OK)
		{
			char		what[512];

			/* NextMsg turns a 503 status into NATS_NO_RESPONDERS */
			snprintf(what, sizeof(what), "request to \"%s\" failed", subject);
			fatal_status(what, s);
		}

		/* which request is it the reply to? */
		subj = natsMsg_GetSubject(m);
		dot = strrchr(subj, '.');
		errno = 0;
		k = dot ? strtoll(dot + 1, &end, 10) : -1;
		if (dot == NULL || errno != 0 || *end != '\0'
			|| k < next_print || k >= next_send
			|| ring[k % REQ_WINDOW] != NULL)
		{
			natsMsg_Destroy(m);	/* stray or duplicate reply */
			continue;
		}
		ring[k % REQ_WINDOW] = m;
	}

	for (int i = 0; i < REQ_WINDOW; i++)
		natsMsg_Destroy(ring[i]);
	natsSubscription_Destroy(sub);
	natsInbox_Destroy(inbox);
	free(wild);
	return rc;
}

static int
cmd_request(int argc, char **argv)
{
	const char *subject;
	const char *data = NULL;
	int64_t		count = 1;
	int64_t		start = 0;
	bool		formatted = false;
	natsConnection *nc;
	int			i;
	int			rc;

	if (argc < 1)
		usage();
	subject = argv[0];
	for (i = 1; i < argc; i++)
	{
		if (strcmp(argv[i], "--count") == 0 && i + 1 < argc)
		{
			count = parse_int(argv[i], argv[i + 1], 0);
			formatted = true;
			i++;
		}
		else if (strcmp(argv[i], "--start") == 0 && i + 1 < argc)
		{
			start = parse_int(argv[i], argv[i + 1], INT64_MIN);
			formatted = true;
			i++;
		}
		else if (data == NULL)
			data = argv[i];
		else
		{
			fprintf(stderr, "natstool: request: unexpected argument \"%s\"\n",
					argv[i]);
			usage();
		}
	}
	if (data == NULL)
		data = "";
	if (formatted)
		check_format("DATA", data);

	nc = connect_nats(0, false);
	if (formatted)
		rc = request_many(nc, subject, data, start, count);
	else
		rc = request_one(nc, subject, data);
	fflush(stdout);

	closing = true;
	natsConnection_Destroy(nc);
	nats_Close();
	return rc;
}

/*
 * send SUBJECT [DATA]: one core NATS message, no reply asked for (what a
 * client's ack is); flushed, so that the server has it when this exits.
 */
static int
cmd_send(int argc, char **argv)
{
	natsConnection *nc;
	natsStatus	s;

	if (argc < 1 || argc > 2)
		usage();
	nc = connect_nats(0, false);
	s = natsConnection_PublishString(nc, argv[0], argc == 2 ? argv[1] : "");
	if (s == NATS_OK)
		s = natsConnection_FlushTimeout(nc, opt_timeout);
	if (s != NATS_OK)
		fatal_status("cannot send", s);
	printf("sent 1\n");
	fflush(stdout);
	closing = true;
	natsConnection_Destroy(nc);
	nats_Close();
	return 0;
}

/* ----------------------------------------------------------------
 * drain
 * ----------------------------------------------------------------
 */

/* Ask the consumer for up to batch messages, replies to reply. */
static void
pull(natsConnection *nc, const char *api, const char *reply, int64_t batch)
{
	char		body[128];
	natsStatus	s;

	snprintf(body, sizeof(body),
			 "{\"batch\":%" PRId64 ",\"expires\":%" PRId64 "}",
			 batch, (int64_t) 5000 * 1000 * 1000);
	s = natsConnection_PublishRequestString(nc, api, reply, body);
	if (s != NATS_OK)
		fatal_status("cannot send a pull request", s);
}

static int
cmd_drain(int argc, char **argv)
{
	const char *stream;
	const char *consumer;
	int64_t		count = -1;
	int64_t		batch = 100;
	int64_t		received = 0;
	int64_t		first_ms = 0;
	int64_t		idle_since;
	natsConnection *nc;
	natsSubscription *sub = NULL;
	natsInbox  *inbox = NULL;
	natsMsg   **held;
	char		api[512];
	char		wild[300];
	char		reply[320];
	int64_t		pulls = 0;
	int64_t		owed;			/* messages the outstanding pull may still bring */
	natsStatus	s;
	int			i;

	if (argc < 2)
		usage();
	stream = argv[0];
	consumer = argv[1];
	for (i = 2; i < argc; i++)
	{
		if (strcmp(argv[i], "--count") == 0 && i + 1 < argc)
			count = parse_int(argv[i], argv[i + 1], 1);
		else if (strcmp(argv[i], "--batch") == 0 && i + 1 < argc)
			batch = parse_int(argv[i], argv[i + 1], 1);
		else
			usage();
		i++;
	}
	if (count < 0)
		usage();
	held = calloc(batch, sizeof(natsMsg *));
	if (held == NULL)
	{
		fprintf(stderr, "natstool: out of memory\n");
		return EXIT_FAIL;
	}

	nc = connect_nats(0, false);
	snprintf(api, sizeof(api), "$JS.API.CONSUMER.MSG.NEXT.%s.%s", stream,
			 consumer);
	s = natsInbox_Create(&inbox);
	if (s == NATS_OK)
	{
		snprintf(wild, sizeof(wild), "%s.*", inbox);
		s = natsConnection_SubscribeSync(&sub, nc, wild);
	}
	if (s == NATS_OK)
		s = natsSubscription_SetPendingLimits(sub, -1, -1);
	if (s != NATS_OK)
		fatal_status("cannot subscribe to the pull inbox", s);

	snprintf(reply, sizeof(reply), "%s.%" PRId64, inbox, pulls++);
	owed = Min64(batch, count);
	pull(nc, api, reply, owed);
	idle_since = nats_Now();
	while (received < count)
	{
		int			n = 0;

		/* collect up to a batch: what arrived, waiting only for the first */
		while (n < batch && received + n < count && owed > 0)
		{
			natsMsg    *m = NULL;

			s = natsSubscription_NextMsg(&m, sub, n == 0 ? 100 : 0);
			if (s == NATS_TIMEOUT)
			{
				if (n > 0)
					break;
				if (nats_Now() - idle_since > 30000)
				{
					fprintf(stderr, "natstool: drain: no message for 30 s after %" PRId64 "\n",
							received);
					return EXIT_FAIL;
				}
				continue;
			}
			if (s != NATS_OK)
				fatal_status("cannot read the pull inbox", s);
			if (natsMsg_GetReply(m) == NULL || natsMsg_GetDataLength(m) == 0)
			{
				const char *status = NULL;

				/* a status: this pull is over (408 expired, 404...) */
				natsMsgHeader_Get(m, "Status", &status);
				if (status != NULL && strcmp(natsMsg_GetSubject(m), reply) == 0)
					owed = 0;
				natsMsg_Destroy(m);
				continue;
			}
			if (first_ms == 0)
				first_ms = nats_Now();
			held[n++] = m;
			owed--;
		}
		idle_since = nats_Now();

		/* ask for the next batch before acknowledging this one */
		received += n;
		if (received < count && owed <= 0)
		{
			snprintf(reply, sizeof(reply), "%s.%" PRId64, inbox, pulls++);
			owed = Min64(batch, count - received);
			pull(nc, api, reply, owed);
		}
		for (i = 0; i < n; i++)
		{
			s = natsConnection_PublishString(nc, natsMsg_GetReply(held[i]), "+ACK");
			if (s != NATS_OK)
				fatal_status("cannot acknowledge", s);
			natsMsg_Destroy(held[i]);
		}
		if (n > 0)
		{
			s = natsConnection_FlushTimeout(nc, opt_timeout);
			if (s != NATS_OK)
				fatal_status("cannot flush the acknowledgements", s);
		}
	}

	printf("drained %" PRId64 " in %.3f s\n", received,
		   (nats_Now() - first_ms) / 1000.0);
	fflush(stdout);
	closing = true;
	natsSubscription_Destroy(sub);
	natsInbox_Destroy(inbox);
	natsConnection_Destroy(nc);
	nats_Close();
	free(held);
	return 0;
}

int
main(int argc, char **argv)
{
	int			i = 1;

	while (i < argc && strncmp(argv[i], "--", 2) == 0)
	{
		if (strcmp(argv[i], "--url") == 0 && i + 1 < argc)
			opt_url = argv[i + 1];
		else if (strcmp(argv[i], "--timeout") == 0 && i + 1 < argc)
			opt_timeout = parse_int(argv[i], argv[i + 1], 1);
		else if (strcmp(argv[i], "--token") == 0 && i + 1 < argc)
			opt_token = argv[i + 1];
		else if (strcmp(argv[i], "--user") == 0 && i + 1 < argc)
			opt_user = argv[i + 1];
		else if (strcmp(argv[i], "--password") == 0 && i + 1 < argc)
			opt_password = argv[i + 1];
		else if (strcmp(argv[i], "--creds") == 0 && i + 1 < argc)
			opt_creds = argv[i + 1];
		else if (strcmp(argv[i], "--tls-ca") == 0 && i + 1 < argc)
			opt_tls_ca = argv[i + 1];
		else if (strcmp(argv[i], "--tls-cert") == 0 && i + 1 < argc)
			opt_tls_cert = argv[i + 1];
		else if (strcmp(argv[i], "--tls-key") == 0 && i + 1 < argc)
			opt_tls_key = argv[i + 1];
		else if (strcmp(argv[i], "--help") == 0)
			usage();
		else
		{
			fprintf(stderr, "natstool: unknown option \"%s\"\n", argv[i]);
			usage();
		}
		i += 2;
	}
	if (i >= argc)
		usage();

	if (strcmp(argv[i], "publish") == 0)
		return cmd_publish(argc - i - 1, argv + i + 1);
	if (strcmp(argv[i], "request") == 0)
		return cmd_request(argc - i - 1, argv + i + 1);
	if (strcmp(argv[i], "drain") == 0)
		return cmd_drain(argc - i - 1, argv + i + 1);
	if (strcmp(argv[i], "send") == 0)
		return cmd_send(argc - i - 1, argv + i + 1);

	fprintf(stderr, "natstool: unknown command \"%s\"\n", argv[i]);
	usage();
	return EXIT_USAGE;
}
