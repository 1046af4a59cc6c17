/*-------------------------------------------------------------------------
 *
 * lease_identity.c
 *	  Who holds a lease: the value naming this instance (its lineage, its
 *	  run, where that run lives), its heartbeat's value, and the questions
 *	  lease.c asks of another holder's value (same lineage?  an earlier
 *	  run of this very server?  how long to wait for it?); and whether this
 *	  server is stopping cleanly with none of its workers left, so that its
 *	  leases may be released.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <sys/stat.h>
#include <unistd.h>

#include "access/xlog.h"
#include "miscadmin.h"
#include "postmaster/postmaster.h"
#include "storage/fd.h"
#include "utils/pidfile.h"
#include "utils/memutils.h"

#include "lease.h"
#include "lease_internal.h"
#include "reliq.h"
#include "shmem.h"

static char *my_identity = NULL;
static char  my_instance[32];

/*
 * This instance's id as leases name it: the random id the postmaster drew
 * at start, in hex.  Also written into the metadata of the consumers it
 * owns (nats-server 2.10+).
 */
const char *
reliq_lease_instance(void)
{
	if (my_instance[0] == '\0')
		snprintf(my_instance, sizeof(my_instance), "%016llx",
				 (unsigned long long) reliq_instance_id);
	return my_instance;
}

/*
 * This boot of the machine's kernel ("" if unknown): two processes that
 * see the same boot id run on one machine, in one boot.
 */
static void
read_boot_id(char *buf, size_t size)
{
	FILE *file = AllocateFile("/proc/sys/kernel/random/boot_id", "r");

	buf[0] = '\0';
	if (file == NULL)
		return;
	if (fgets(buf, size, file) == NULL)
		buf[0] = '\0';
	buf[strcspn(buf, "\n\"\\")] = '\0';
	FreeFile(file);
}

/*
 * The data directory as the file system knows it (device and inode), ""
 * if unknown: a copy of it is another directory, whatever its path.
 */
static void
read_data_directory(char *buf, size_t size)
{
	struct stat st;

	if (stat(DataDir, &st) != 0)
		buf[0] = '\0';
	else
		snprintf(buf, size, "%llu:%llu",
				 (unsigned long long) st.st_dev, (unsigned long long) st.st_ino);
}

/*
 * The lease value naming this instance (JSON), made once.  Besides who it
 * is for people (host, port, database), it says which cluster lineage it
 * is (system identifier, timeline), which run (instance, drawn by the
 * postmaster) and where that run lives (boot of the machine, data
 * directory), so that a later run of this very server can tell that the
 * holder was its own earlier run (holder_is_earlier_run).
 */
char *
reliq_lease_identity_value(void)
{
	char host[128];
	char boot[64];
	char datadir[64];

	if (my_identity != NULL)
		return my_identity;
	if (gethostname(host, sizeof(host)) != 0)
		strlcpy(host, "unknown", sizeof(host));
	host[sizeof(host) - 1] = '\0';
	host[strcspn(host, "\"\\")] = '\0';
	read_boot_id(boot, sizeof(boot));
	read_data_directory(datadir, sizeof(datadir));
	(void) reliq_lease_instance();
	my_identity = MemoryContextStrdup(TopMemoryContext,
									  psprintf("{\"instance\":\"%s\",\"system\":\"" UINT64_FORMAT "\","
											   "\"timeline\":%u,\"host\":\"%s\",\"port\":%d,\"database\":\"%s\","
											   "\"boot\":\"%s\",\"datadir\":\"%s\"}",
											   my_instance, GetSystemIdentifier(),
											   GetWALInsertionTimeLine(), host,
											   PostPortNumber, reliq_database_name,
											   boot, datadir));
	return my_identity;
}

/*
 * This instance's heartbeat: its identity and the lease_ttl it renews
 * with now (a setting that may differ between two clusters and change on
 * reload), so that a taker waits for the owner's ttl, not only its own.
 */
char *
reliq_lease_heartbeat_value(void)
{
	const char *identity = reliq_lease_identity_value();

	return psprintf("%.*s,\"ttl_ms\":%d}", (int) strlen(identity) - 1, identity,
					reliq_lease_ttl);
}

/* A string field of a lease value; "" if absent.  Values are ours. */
char *
reliq_lease_field(const char *value, const char *name)
{
	char       *pattern = psprintf("\"%s\":", name);
	const char *p = value ? strstr(value, pattern) : NULL;
	const char *end;

	if (p == NULL)
		return "";
	p += strlen(pattern);
	if (*p == '"')
	{
		p++;
		end = strchr(p, '"');
	}
	else
		end = p + strcspn(p, ",}");
	return end ? pnstrdup(p, end - p) : "";
}

/* Another run of this very server (or a file-level copy of it)? */
bool
reliq_lease_same_lineage(const char *value)
{
	return strcmp(reliq_lease_field(value, "system"),
				  psprintf(UINT64_FORMAT, GetSystemIdentifier())) == 0 &&
		   strcmp(reliq_lease_field(value, "timeline"),
				  psprintf("%u", GetWALInsertionTimeLine())) == 0;
}

/*
 * An earlier run of this very server, already gone?  Same lineage, same
 * boot of the same machine, same data directory, another postmaster.
 * PostgreSQL runs one postmaster per data directory (postmaster.pid), and
 * a new one does not start while a process of the former is still
 * attached to its shared memory, as every reliq process is: the holder's
 * workers have all exited.  A copy elsewhere, or this server after a
 * reboot, differs in boot or data directory and waits as any other.
 */
bool
reliq_lease_earlier_run(const char *value)
{
	const char *mine = reliq_lease_identity_value();
	char       *boot = reliq_lease_field(value, "boot");
	char       *datadir = reliq_lease_field(value, "datadir");

	return reliq_lease_same_lineage(value) &&
		   strcmp(reliq_lease_field(value, "instance"), my_instance) != 0 &&
		   boot[0] != '\0' && datadir[0] != '\0' &&
		   strcmp(boot, reliq_lease_field(mine, "boot")) == 0 &&
		   strcmp(datadir, reliq_lease_field(mine, "datadir")) == 0 &&
		   strcmp(reliq_lease_field(value, "host"), reliq_lease_field(mine, "host")) == 0;
}

/*
 * How long a heartbeat must stay unchanged before its owner is known to
 * have stopped: the longer of this cluster's lease_ttl and the one the
 * owner renews with (absent in the heartbeats of reliq 0.2).
 */
int
reliq_lease_owner_wait_ms(const char *heartbeat)
{
	int theirs = atoi(reliq_lease_field(heartbeat, "ttl_ms"));

	return Max(reliq_lease_ttl, theirs);
}

/* Is the postmaster shutting down (not merely restarting a process)? */
bool
reliq_lease_server_stopping(void)
{
	FILE *file = AllocateFile("postmaster.pid", "r");
	char  line[128];
	int   lineno = 0;
	bool  stopping = false;

	if (file == NULL)
		return false;
	while (fgets(line, sizeof(line), file) != NULL)
		if (++lineno == LOCK_FILE_LINE_PM_STATUS)
		{
			stopping = strncmp(line, PM_STATUS_STOPPING, strlen(PM_STATUS_STOPPING)) == 0;
			break;
		}
	FreeFile(file);
	return stopping;
}

/* Have the launcher and every worker exited (waiting up to wait_ms)? */
bool
reliq_lease_workers_gone(int wait_ms)
{
	int waited;

	for (waited = 0; waited <= wait_ms; waited += 10)
	{
		bool gone;
		int  i;

		SpinLockAcquire(&reliq_shared->mutex);
		gone = (reliq_shared->launcher_pid == 0);
		SpinLockRelease(&reliq_shared->mutex);
		for (i = 0; gone && i < reliq_shared->max_workers; i++)
		{
			ReliqWorkerSlot *slot = &reliq_shared->slots[i];

			SpinLockAcquire(&slot->mutex);
			gone = (slot->pid == 0);
			SpinLockRelease(&slot->mutex);
		}
		if (gone)
			return true;
		pg_usleep(10000L);
	}
	return false;
}
