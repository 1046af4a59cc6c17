/*-------------------------------------------------------------------------
 *
 * metrics_server.c
 *	  The optional Prometheus endpoint: a background worker of its own
 *	  ("reliq metrics"), started when reliq.metrics_port is not 0, that
 *	  answers GET reliq.metrics_path (/metrics by default) on
 *	  reliq.metrics_listen_address.
 *
 * It has no database connection and reads only shared memory, so a slow
 * or stuck scraper can delay nothing but itself: message processing never
 * waits for it.  One request at a time; reading the request and writing
 * the answer are each bounded by reliq.nats_timeout; the connection is
 * closed after every answer.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <fcntl.h>
#include <netdb.h>
#include <sys/socket.h>
#include <unistd.h>

#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/latch.h"
#include "tcop/tcopprot.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "metrics.h"
#include "reliq.h"

#define REQUEST_LIMIT 8192

static int
open_listener(void)
{
	struct addrinfo hints;
	struct addrinfo *addrs = NULL;
	struct addrinfo *a;
	char		port[16];
	int			fd = -1;
	int			rc;
	int			one = 1;

	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_PASSIVE;
	snprintf(port, sizeof(port), "%d", reliq_metrics_port);
	rc = getaddrinfo(reliq_metrics_listen_address, port, &hints, &addrs);
	if (rc != 0)
		ereport(FATAL,
				(errcode(ERRCODE_CONFIG_FILE_ERROR),
				 errmsg("could not resolve reliq.metrics_listen_address \"%s\": %s",
						reliq_metrics_listen_address, gai_strerror(rc))));

	for (a = addrs; a != NULL && fd < 0; a = a->ai_next)
	{
		fd = socket(a->ai_family, a->ai_socktype, a->ai_protocol);
		if (fd < 0)
			continue;
		(void) setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
		if (bind(fd, a->ai_addr, a->ai_addrlen) < 0 || listen(fd, 16) < 0)
		{
			int			save_errno = errno;

			close(fd);
			fd = -1;
			errno = save_errno;
		}
	}
	freeaddrinfo(addrs);
	if (fd < 0)
		ereport(FATAL,
				(errcode_for_socket_access(),
				 errmsg("could not listen on %s:%d for reliq metrics: %m",
						reliq_metrics_listen_address, reliq_metrics_port),
				 errhint("Choose a free port with reliq.metrics_port, or set it to 0 to turn the endpoint off.")));
	if (fcntl(fd, F_SETFL, O_NONBLOCK) < 0)
		ereport(FATAL,
				(errcode_for_socket_access(),
				 errmsg("could not make the metrics socket non-blocking: %m")));
	return fd;
}

/* Wait until fd is readable or writable, at most until deadline. */
static bool
wait_socket(int fd, int event, TimestampTz deadline)
{
	long		secs;
	int			usecs;
	int			rc;

	TimestampDifference(GetCurrentTimestamp(), deadline, &secs, &usecs);
	if (secs == 0 && usecs == 0)
		return false;
	event |= WL_TIMEOUT | WL_LATCH_SET | WL_EXIT_ON_PM_DEATH;
	rc = WaitLatchOrSocket(MyLatch, event, fd,
						   secs * 1000 + usecs / 1000 + 1, PG_WAIT_EXTENSION);
	if (rc & WL_LATCH_SET)
	{
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
	}
	return (rc & event) != 0;
}

static void
send_all(int fd, const char *data, size_t len, TimestampTz deadline)
{
	while (len > 0)
	{
		ssize_t		n = send(fd, data, len, MSG_NOSIGNAL);

		if (n > 0)
		{
			data += n;
			len -= n;
		}
		else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
		{
			if (!wait_socket(fd, WL_SOCKET_WRITEABLE, deadline))
				return;
		}
		else
			return;
	}
}

static void
respond(int fd, const char *status, const char *content_type,
		const char *body, TimestampTz deadline)
{
	char	   *head = psprintf("HTTP/1.1 %s\r\n"
								"Content-Type: %s\r\n"
								"Content-Length: %zu\r\n"
								"Connection: close\r\n\r\n",
								status, content_type, strlen(body));

	send_all(fd, head, strlen(head), deadline);
	send_all(fd, body, strlen(body), deadline);
}

/* Does the request target (after "GET ") name reliq.metrics_path? */
static bool
path_matches(const char *target)
{
	size_t		len = strlen(reliq_metrics_path);

	return strncmp(target, reliq_metrics_path, len) == 0 &&
		(target[len] == ' ' || target[len] == '?');
}

/* Read one request, answer it, close the connection. */
static void
serve(int fd)
{
	TimestampTz deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
													   reliq_nats_timeout);
	char		request[REQUEST_LIMIT + 1];
	size_t		len = 0;
	char	   *line_end;

	(void) fcntl(fd, F_SETFL, O_NONBLOCK);
	for (;;)
	{
		ssize_t		n = recv(fd, request + len, REQUEST_LIMIT - len, 0);

		if (n > 0)
		{
			len += n;
			request[len] = '\0';
			if (strstr(request, "\r\n\r\n") || strstr(request, "\n\n") ||
				len == REQUEST_LIMIT)
				break;
		}
		else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
		{
			if (!wait_socket(fd, WL_SOCKET_READABLE, deadline))
				return;
		}
		else
			return;
	}

	line_end = strpbrk(request, "\r\n");
	if (line_end)
		*line_end = '\0';
	if (strncmp(request, "GET ", 4) != 0)
		respond(fd, "405 Method Not Allowed", "text/plain", "only GET\n", deadline);
	else if (!path_matches(request + 4))
		respond(fd, "404 Not Found", "text/plain",
				psprintf("try %s\n", reliq_metrics_path), deadline);
	else
		respond(fd, "200 OK", "text/plain; version=0.0.4; charset=utf-8",
				reliq_metrics_text(), deadline);
}

void
reliq_metrics_server_main(Datum main_arg)
{
	MemoryContext request_cxt;
	int			listener;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();

	listener = open_listener();
	ereport(LOG,
			(errcode(ERRCODE_SUCCESSFUL_COMPLETION),
			 errmsg("reliq metrics served at http://%s:%d%s",
					reliq_metrics_listen_address, reliq_metrics_port,
					reliq_metrics_path)));
	request_cxt = AllocSetContextCreate(TopMemoryContext, "reliq metrics request",
										ALLOCSET_DEFAULT_SIZES);

	for (;;)
	{
		int			rc;

		rc = WaitLatchOrSocket(MyLatch,
							   WL_LATCH_SET | WL_SOCKET_READABLE | WL_EXIT_ON_PM_DEATH,
							   listener, -1, PG_WAIT_EXTENSION);
		if (rc & WL_LATCH_SET)
			ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}
		if (rc & WL_SOCKET_READABLE)
		{
			int			fd = accept(listener, NULL, NULL);

			if (fd >= 0)
			{
				MemoryContext old = MemoryContextSwitchTo(request_cxt);

				serve(fd);
				close(fd);
				MemoryContextSwitchTo(old);
				MemoryContextReset(request_cxt);
			}
		}
	}
}
