# matchmaker: PGXS build
MODULE_big = matchmaker
OBJS = \
	src/matchmaker.o \
	src/worker.o \
	src/match.o \
	src/intents.o \
	src/http.o \
	src/json.o \
	src/room_janus.o \
	src/room_http.o \
	src/room_agora.o \
	src/room_livekit.o \
	src/push_webhook.o \
	src/push_fcm.o \
	src/push_apns.o \
	src/sign.o

EXTENSION = matchmaker
DATA = sql/matchmaker--0.1.sql
PGFILEDESC = "matchmaker - mood matchmaking worker"

PG_CPPFLAGS = -I$(srcdir)/src -I$(shell $(PG_CONFIG) --includedir)
SHLIB_LINK = -lpq -lcurl -ljansson -lcrypto -lz

REGRESS = schema validation matching expiry stats push rooms privileges
REGRESS_OPTS = --temp-instance=tmp_check --temp-config=$(srcdir)/test/regress.conf
ISOLATION = claim cancel
ISOLATION_OPTS = --temp-instance=tmp_check_iso --temp-config=$(srcdir)/test/regress.conf

EXTRA_CLEAN = tmp_check tmp_check_iso results output_iso

PG_CONFIG ?= pg_config
PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

# every object depends on the shared header
$(OBJS): $(srcdir)/src/matchmaker.h

# Benchmark on this machine; see bench/README.md. Not part of the tests.
.PHONY: bench
bench:
	bench/run
