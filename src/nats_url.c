/*-------------------------------------------------------------------------
 *
 * nats_url.c
 *	  The check hook of reliq.nats_url: a malformed URL is refused when it
 *	  is set (ALTER SYSTEM, or a reload of postgresql.conf keeps the old
 *	  value), instead of surfacing later as a server that seems down.
 *
 * What is accepted is what nats_conn.c can use with the NATS C client
 * (3.4.1): servers separated by commas or spaces (at most
 * RELIQ_MAX_NATS_SERVERS), each [nats:// | tls://][user[:password]@]host[:port],
 * the host a name, an IPv4 address or an [IPv6] address, the port 1 to
 * 65535.  The C client has no WebSocket transport, so ws:// and wss:// are
 * refused with that reason rather than accepted and failing at connect.
 * Messages never repeat a password: user:password@ is shown as ***@.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "lib/stringinfo.h"
#include "utils/elog.h"

#include "nats_url.h"

/* One server of the list, with any user:password@ masked. */
static char *
masked_server(const char *server, int len)
{
	StringInfoData buf;
	const char *scheme_end = NULL;
	const char *at = NULL;
	int			i;

	for (i = 0; i + 2 < len; i++)
		if (server[i] == ':' && server[i + 1] == '/' && server[i + 2] == '/')
		{
			scheme_end = server + i + 3;
			break;
		}
	for (i = len - 1; i >= 0; i--)
		if (server[i] == '@')
		{
			at = server + i;
			break;
		}

	initStringInfo(&buf);
	if (at == NULL || (scheme_end != NULL && at < scheme_end))
		appendBinaryStringInfo(&buf, server, len);
	else
	{
		const char *start = scheme_end ? scheme_end : server;

		appendBinaryStringInfo(&buf, server, start - server);
		appendStringInfoString(&buf, "***");
		appendBinaryStringInfo(&buf, at, server + len - at);
	}
	return buf.data;
}

static bool
is_host_char(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
		(c >= '0' && c <= '9') || c == '-' || c == '.' || c == '_';
}

static bool
is_ipv6_char(char c)
{
	return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') ||
		(c >= 'A' && c <= 'F') || c == ':' || c == '.';
}

/*
 * Why one server is unusable, as an errdetail sentence; NULL when it is
 * fine.  `server` is not NUL-terminated: it is `len` bytes of the setting.
 */
static char *
server_problem(const char *server, int len)
{
	const char *p = server;
	const char *end = server + len;
	const char *rest;
	const char *at = NULL;
	const char *host_end;
	const char *q;

	/* the scheme */
	for (q = p; q + 2 < end; q++)
		if (q[0] == ':' && q[1] == '/' && q[2] == '/')
			break;
	if (q + 2 < end)
	{
		int			n = q - p;

		if ((n == 4 && strncmp(p, "nats", 4) == 0) ||
			(n == 3 && strncmp(p, "tls", 3) == 0))
			p = q + 3;
		else if ((n == 2 && strncmp(p, "ws", 2) == 0) ||
				 (n == 3 && strncmp(p, "wss", 3) == 0))
			return psprintf("The NATS C client reliq uses has no WebSocket transport; use the server's client port with nats:// or tls://.");
		else
			return psprintf("\"%.*s\" is not a scheme reliq can use: use nats://, tls:// or no scheme.", n, p);
	}
	else if (memchr(p, '/', len) != NULL)
		return psprintf("It is not a URL: a scheme is followed by \"://\", as in nats://host:4222.");

	/* user[:password]@, up to the last '@' as the C client reads it */
	for (q = end - 1; q >= p; q--)
		if (*q == '@')
		{
			at = q;
			break;
		}
	if (at != NULL)
	{
		if (at == p)
			return psprintf("Nothing comes before \"@\": write user:password@host, or leave out the \"@\".");
		for (q = p; q < at; q++)
			if (*q == '"' || *q == '\\')
				return psprintf("The user or password holds a double quote or a backslash, which the NATS C client sends unescaped.");
		p = at + 1;
	}

	/* the host */
	rest = p;
	if (p < end && *p == '[')
	{
		for (q = p + 1; q < end && *q != ']'; q++)
			if (!is_ipv6_char(*q))
				return psprintf("An IPv6 address in brackets holds only hexadecimal digits, \":\" and \".\".");
		if (q >= end || q == p + 1)
			return psprintf("An IPv6 address is written in brackets, as in nats://[::1]:4222.");
		host_end = q + 1;
	}
	else
	{
		for (q = p; q < end && *q != ':' && *q != '/'; q++)
			if (!is_host_char(*q))
				return psprintf("A host is a name (letters, digits, \"-\", \".\", \"_\"), an IPv4 address or an [IPv6] address.");
		host_end = q;
	}
	if (host_end == rest)
		return psprintf("The host is missing.");

	/* the port, and at most a trailing '/' */
	p = host_end;
	if (p < end && *p == ':')
	{
		long		port = 0;

		p++;
		if (p == end || *p == '/')
			return psprintf("The port is missing after \":\".");
		for (; p < end && *p != '/'; p++)
		{
			if (*p < '0' || *p > '9')
				return psprintf("The port must be a number from 1 to 65535.");
			port = port * 10 + (*p - '0');
			if (port > 65535)
				break;
		}
		if (port < 1 || port > 65535)
			return psprintf("The port must be a number from 1 to 65535.");
	}
	if (p < end && !(*p == '/' && p + 1 == end))
		return psprintf("A NATS server URL has no path.");
	return NULL;
}

static bool
is_separator(char c)
{
	return c == ',' || c == ' ';
}

/*
 * GUC check hook of reliq.nats_url.  The list is split as nats_conn.c
 * splits it: on commas and spaces.
 */
bool
reliq_check_nats_url(char **newval, void **extra, GucSource source)
{
	const char *p = *newval ? *newval : "";
	int			nservers = 0;

	while (*p)
	{
		const char *start;
		char	   *problem;

		while (is_separator(*p))
			p++;
		if (*p == '\0')
			break;
		start = p;
		while (*p && !is_separator(*p))
			p++;
		nservers++;
		problem = server_problem(start, p - start);
		if (problem != NULL)
		{
			GUC_check_errcode(ERRCODE_INVALID_PARAMETER_VALUE);
			GUC_check_errmsg("invalid NATS server URL \"%s\" in reliq.nats_url",
							 masked_server(start, p - start));
			GUC_check_errdetail("%s", problem);
			GUC_check_errhint("reliq.nats_url takes nats://host:port, tls://host:port or host:port, with user:password@ before the host if need be; the servers of a cluster are separated by commas.");
			return false;
		}
	}
	if (nservers == 0)
	{
		GUC_check_errcode(ERRCODE_INVALID_PARAMETER_VALUE);
		GUC_check_errmsg("reliq.nats_url names no NATS server");
		GUC_check_errhint("For example reliq.nats_url = 'nats://127.0.0.1:4222'.");
		return false;
	}
	if (nservers > RELIQ_MAX_NATS_SERVERS)
	{
		GUC_check_errcode(ERRCODE_INVALID_PARAMETER_VALUE);
		GUC_check_errmsg("reliq.nats_url names %d NATS servers, more than %d",
						 nservers, RELIQ_MAX_NATS_SERVERS);
		GUC_check_errdetail("reliq connects to the first %d only.", RELIQ_MAX_NATS_SERVERS);
		GUC_check_errhint("A few servers of a cluster are enough: the client learns the others from them.");
		return false;
	}
	return true;
}
