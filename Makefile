# sesrelay - build, test, benchmark.  GNU make.
#
#   make          build ./sesrelay
#   make test     every test (unit + integration through the real binary)
#   make asan     the same tests against an ASan+UBSan build
#   make bench    throughput/memory benchmarks against Postfix (not part of test)
#   make demo     end-to-end demo with a local SES emulator
#   make fuzz     libFuzzer targets, bounded time
#   make install  binary, example config, systemd unit

CC      ?= cc
PREFIX  ?= /usr/local
CFLAGS  ?= -O2 -g
WARN     = -Wall -Wextra -Werror -Wshadow -Wpointer-arith -Wno-unused-parameter
CPPFLAGS = -std=c11 -D_GNU_SOURCE -I.
LIBS     = -levent_core -levent_extra -levent_openssl -levent_pthreads \
           -lssl -lcrypto -lcurl -linih -lcrypt -lpthread -lm

# Debian packages the build needs; installed by `make deps` when root.
BUILD_DEBS = build-essential pkg-config libevent-dev libssl-dev libcurl4-openssl-dev libinih-dev

SRCS     = $(sort $(wildcard relay/*.c smtp/*.c ses/*.c conf/*.c))
LIBSRCS  = $(filter-out relay/main.c,$(SRCS))
UNITSRCS = $(sort $(wildcard tests/unit/test_*.c))
# Small programs the integration tests drive (tests/tools/*.c), e.g. s3tool.
TOOLSRCS = $(sort $(wildcard tests/tools/*.c))

B        = build/release
A        = build/asan
ASANFLAGS = -O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined

all: sesrelay

# --- dependencies -----------------------------------------------------------
build/.deps:
	@missing=""; \
	for h in event2/event.h event2/bufferevent_ssl.h openssl/ssl.h curl/curl.h ini.h; do \
	  echo "#include <$$h>" | $(CC) -E -x c - >/dev/null 2>&1 || missing="$$missing $$h"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing build dependencies (missing:$$missing)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(BUILD_DEBS) >/dev/null || exit 1; \
	  else \
	    echo "missing headers:$$missing"; \
	    echo "run: sudo apt-get install $(BUILD_DEBS)"; exit 1; \
	  fi; \
	fi
	@mkdir -p build && touch $@

deps: build/.deps

# --- objects ----------------------------------------------------------------
$(B)/%.o: %.c build/.deps
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) $(WARN) -MMD -MP -c -o $@ $<

$(A)/%.o: %.c build/.deps
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(ASANFLAGS) $(WARN) -MMD -MP -c -o $@ $<

sesrelay: $(SRCS:%.c=$(B)/%.o)
	$(CC) $(CFLAGS) -o $@ $^ $(LIBS)

$(A)/sesrelay: $(SRCS:%.c=$(A)/%.o)
	$(CC) $(ASANFLAGS) -o $@ $^ $(LIBS)

# Unit tests link against an archive so each pulls in only the modules it uses.
$(B)/libsesrelay.a: $(LIBSRCS:%.c=$(B)/%.o)
	rm -f $@ && ar rcs $@ $^

$(A)/libsesrelay.a: $(LIBSRCS:%.c=$(A)/%.o)
	rm -f $@ && ar rcs $@ $^

$(B)/tests/unit/%: $(B)/tests/unit/%.o $(B)/libsesrelay.a
	$(CC) $(CFLAGS) -o $@ $^ $(LIBS)

$(A)/tests/unit/%: $(A)/tests/unit/%.o $(A)/libsesrelay.a
	$(CC) $(ASANFLAGS) -o $@ $^ $(LIBS)

$(B)/tests/tools/%: $(B)/tests/tools/%.o $(B)/libsesrelay.a
	$(CC) $(CFLAGS) -o $@ $^ $(LIBS)

$(A)/tests/tools/%: $(A)/tests/tools/%.o $(A)/libsesrelay.a
	$(CC) $(ASANFLAGS) -o $@ $^ $(LIBS)

UNITS      = $(UNITSRCS:%.c=$(B)/%)
ASAN_UNITS = $(UNITSRCS:%.c=$(A)/%)
TOOLS      = $(TOOLSRCS:%.c=$(B)/%)
ASAN_TOOLS = $(TOOLSRCS:%.c=$(A)/%)

.PRECIOUS: $(B)/%.o $(A)/%.o

# --- tests ------------------------------------------------------------------
test: sesrelay $(UNITS) $(TOOLS)
	SESRELAY_BIN=$(CURDIR)/sesrelay SESRELAY_UNIT_DIR=$(CURDIR)/$(B)/tests/unit \
	  SESRELAY_TOOLS_DIR=$(CURDIR)/$(B)/tests/tools tests/run $(TESTS)

asan: $(A)/sesrelay $(ASAN_UNITS) $(ASAN_TOOLS)
	SESRELAY_BIN=$(CURDIR)/$(A)/sesrelay SESRELAY_UNIT_DIR=$(CURDIR)/$(A)/tests/unit \
	  SESRELAY_TOOLS_DIR=$(CURDIR)/$(A)/tests/tools SESRELAY_ASAN=1 tests/run $(TESTS)

# Just the test programs, without running anything.
tools: $(TOOLS)

bench: sesrelay
	tests/bench/run

demo: sesrelay
	tests/demo/run

fuzz:
	tests/fuzz/run

install: sesrelay
	install -d $(DESTDIR)$(PREFIX)/sbin $(DESTDIR)/etc/sesrelay
	install -m 755 sesrelay $(DESTDIR)$(PREFIX)/sbin/sesrelay
	install -m 644 relay.ini.example $(DESTDIR)/etc/sesrelay/relay.ini.example
	if [ -f contrib/sesrelay.service ]; then \
	  install -d $(DESTDIR)/etc/systemd/system; \
	  install -m 644 contrib/sesrelay.service $(DESTDIR)/etc/systemd/system/sesrelay.service; fi

format:
	clang-format -i $(SRCS) $(wildcard */*.h) $(UNITSRCS)

clean:
	rm -rf build sesrelay

.PHONY: all deps test asan tools bench demo fuzz install format clean

-include $(shell find build -name '*.d' 2>/dev/null)
