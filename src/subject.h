/*
 * subject.h: NATS subject rules reliq checks itself, the same on every
 * nats-server version.
 */
#ifndef RELIQ_SUBJECT_H
#define RELIQ_SUBJECT_H

extern bool reliq_subject_within(const char *filter, const char *pattern);
extern bool reliq_subject_within_any(const char *filter,
									 const char *const *patterns, int npatterns);
extern bool reliq_subject_token(const char *subject, int n,
								const char **start, int *len);

#endif							/* RELIQ_SUBJECT_H */
