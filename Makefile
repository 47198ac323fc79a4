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

PG_CONFIG ?= pg_config
PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

# The two commands the README gives.
.PHONY: demo test
demo:
	test/demo.sh
test:
	test/run
