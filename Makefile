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

# The oldest PostgreSQL the build works with.  src/replicator.c calls the
# interrupt-safe libpq helpers of libpq/libpq-be-fe-helpers.h:
# libpqsrv_exec() and libpqsrv_exec_params() are PostgreSQL 17 code that
# 15.13 back-patched (release notes of 15.13, "Allow contrib/dblink queries
# to be interrupted by query cancel", commits 63f6ecb6b and 9e129a224);
# libpqsrv_connect_params() and libpqsrv_disconnect() came with 16 and no
# earlier 15.x release notes them, so 15.13 is the minimum for both.  With
# older headers the compiler would only say "implicit declaration", so this
# is checked before anything is compiled ("make clean" and "make
# installcheck" do not check).
PG_MIN_VERSION = 15.13
PG_VERSION_FULL := $(shell $(PG_CONFIG) --version)
PG_VERSION_NUMS := $(shell echo '$(PG_VERSION_FULL)' | sed -n 's/^PostgreSQL \([0-9][0-9]*\)\.\([0-9][0-9]*\).*/\1 \2/p; s/^PostgreSQL \([0-9][0-9]*\)[^.0-9].*/\1 0/p')

.PHONY: check-pg-version
check-pg-version:
	@set -- $(PG_VERSION_NUMS) 0 0; min_major=$(word 1,$(subst ., ,$(PG_MIN_VERSION))); \
	min_minor=$(word 2,$(subst ., ,$(PG_MIN_VERSION))); \
	if [ "$$1" -lt "$$min_major" ] || { [ "$$1" -eq "$$min_major" ] && [ "$$2" -lt "$$min_minor" ]; }; then \
		echo "replstamp needs PostgreSQL $(PG_MIN_VERSION) or later; $(PG_CONFIG) is \"$(PG_VERSION_FULL)\"." >&2; \
		echo "15.13 is the first 15.x whose libpq/libpq-be-fe-helpers.h has libpqsrv_exec(), which src/replicator.c calls." >&2; \
		echo "Upgrade the server development package (postgresql-server-dev-15), or set PG_CONFIG to a newer pg_config." >&2; \
		exit 1; \
	fi

$(OBJS): | check-pg-version

# The two commands the README gives.
.PHONY: demo test
demo:
	test/demo.sh
test:
	test/run
