# Makefile for reliq (PGXS).
#
#   make && sudo make install      build and install the extension
#   scripts/test                   run every test (pg_regress + TAP), as CI does
#   scripts/demo                   run the demo on a throwaway Postgres and nats-server
#
# PGXS has no "make check".  "make installcheck" tests the running server
# (PGHOST, PGPORT); the test scripts run it against a temporary instance
# (--temp-instance) with a nats-server they start.

MODULE_big = reliq
OBJS = $(patsubst %.c,%.o,$(wildcard src/*.c))

EXTENSION = reliq
DATA = reliq--0.1.sql reliq--0.1--0.2.sql reliq--0.2--0.3.sql
PGFILEDESC = "reliq - NATS JetStream consumer in PostgreSQL"

SHLIB_LINK = -lnats -lcurl
PG_CPPFLAGS = -I$(srcdir)/src

# pg_regress: the SQL surface.  "make installcheck" runs against the
# server at PGHOST/PGPORT (PGXS's convention); the tests that need no
# nats-server (REGRESS_LOCAL) only need reliq in its
# shared_preload_libraries.  With a nats-server -- test/with-nats (and so
# scripts/test) writes RELIQ_TEMP_CONFIG -- everything runs on a temporary
# instance configured for it, TAP suite included.
REGRESS_LOCAL = edges ack_subject
REGRESS_NATS = setup subscription_api errors one_source dead_letter privileges topology publish upsert
ifdef RELIQ_TEMP_CONFIG
REGRESS = $(REGRESS_LOCAL) $(REGRESS_NATS)
REGRESS_OPTS = --temp-instance=tmp_check_regress \
	--temp-config=$(RELIQ_TEMP_CONFIG)

# TAP: real Postgres clusters and real nats-servers (test/t/*.pl).
TAP_TESTS = 1
else
REGRESS = $(REGRESS_LOCAL)
endif

EXTRA_CLEAN = tmp_check tmp_check_regress results regression.diffs .built-for-* \
	regression.out test/tools/natstool

PG_CONFIG ?= pg_config
PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

# PGXS tracks no header dependencies here (autodepend is off): rebuild
# every object when any header changes, so struct layouts never disagree.
$(OBJS): $(wildcard $(srcdir)/src/*.h)

# Nor does it notice objects built for another PostgreSQL: a stamp names
# the one they were built for, and another PG_CONFIG removes them first.
# (Done as the Makefile is read: Makefile.global's .SECONDARY would keep a
# missing stamp from forcing a rebuild as a prerequisite.)
PG_BUILT_FOR := .built-for-$(shell $(PG_CONFIG) --version | tr -c 'A-Za-z0-9.' '_')
ifeq ($(filter clean distclean uninstall,$(MAKECMDGOALS)),)
ifeq ($(wildcard $(PG_BUILT_FOR)),)
$(shell rm -f .built-for-* $(OBJS) $(patsubst %.o,%.bc,$(OBJS)) $(shlib) && touch $(PG_BUILT_FOR))
endif
endif

# After the include: Makefile.global resets these.
PROVE_TESTS = $(or $(RELIQ_TAP_TESTS),test/t/*.pl)
PROVE_FLAGS = -I $(srcdir)/test/perl $(RELIQ_PROVE_FLAGS)

# A small cnats client used by the tests, the demo and the benchmark to
# publish and to talk to the JetStream API from outside Postgres.
test/tools/natstool: test/tools/natstool.c
	$(CC) $(CFLAGS) -Wall -Wextra -O2 -o $@ $< -lnats

all: test/tools/natstool

# Without a nats-server, say what is skipped.
installcheck: reliq-test-environment
.PHONY: reliq-test-environment
reliq-test-environment:
ifndef RELIQ_TEMP_CONFIG
	@echo "reliq: no nats-server configured: skipping the pg_regress tests that need one ($(REGRESS_NATS)) and the TAP suite; test/with-nats make installcheck (or scripts/test) runs them all on a temporary instance"
endif


# The benchmark, by hand (see README "Performance"); not part of the tests.
.PHONY: bench
bench:
	scripts/bench

# The Debian package postgresql-15-reliq, built with debian/ and
# pg_buildext into dist/ (see scripts/package).
.PHONY: deb
deb:
	scripts/package $(DEB_DIR)
