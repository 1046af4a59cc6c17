/*
 * subject.c: NATS subject rules reliq checks itself.
 *
 * nats-server 2.9 refuses a consumer whose filter subject lies outside its
 * stream's subjects (JetStream error 10093); 2.10 and later accept it, and
 * such a consumer never receives a message.  reliq refuses it on every
 * server, with the same error, before asking the server.
 *
 * Subjects are tokens separated by '.'; in a pattern '*' matches one token
 * and '>' (last) one or more.
 */
#include "postgres.h"

#include "subject.h"

/* Length of the token at s (up to '.' or the end). */
static int
token_length(const char *s)
{
	const char *dot = strchr(s, '.');

	return dot ? (int) (dot - s) : (int) strlen(s);
}

/*
 * Is every subject that filter matches also matched by pattern?  Both may
 * hold wildcards: "a.*" is within "a.>" and "*.b", "a.>" is not within
 * "a.*", and a literal token is within itself or a wildcard only.
 */
bool
reliq_subject_within(const char *filter, const char *pattern)
{
	for (;;)
	{
		int			flen = token_length(filter);
		int			plen = token_length(pattern);
		bool		f_more;
		bool		p_more;

		if (plen == 1 && pattern[0] == '>')
			return true;		/* one or more tokens, whatever they are */
		if (flen == 1 && filter[0] == '>')
			return false;		/* only '>' covers '>' */
		if (!(plen == 1 && pattern[0] == '*'))
		{
			/* a literal token covers only itself */
			if (flen != plen || strncmp(filter, pattern, flen) != 0)
				return false;
		}
		f_more = filter[flen] == '.';
		p_more = pattern[plen] == '.';
		if (!f_more || !p_more)
			return f_more == p_more;
		filter += flen + 1;
		pattern += plen + 1;
	}
}

/* Is filter within one of the patterns? */
bool
reliq_subject_within_any(const char *filter, const char *const *patterns,
						 int npatterns)
{
	int			i;

	for (i = 0; i < npatterns; i++)
		if (reliq_subject_within(filter, patterns[i]))
			return true;
	return false;
}

/* The Nth token (from 1) of a subject: its start and length, or false. */
bool
reliq_subject_token(const char *subject, int n, const char **start, int *len)
{
	const char *p = subject;
	const char *dot;

	while (--n > 0)
	{
		dot = strchr(p, '.');
		if (dot == NULL)
			return false;
		p = dot + 1;
	}
	dot = strchr(p, '.');
	*start = p;
	*len = dot ? dot - p : strlen(p);
	return true;
}
