# Shell helpers for the end-to-end tests: a throwaway PostgreSQL cluster,
# a private Janus and the Node fakes, all on loopback, and a cleanup trap
# that stops whatever these helpers started.
#
# Source this file from bash, then call mm_setup_trap once. Every server
# started here is recorded, and mm_cleanup stops it when the shell exits,
# on success, failure or a signal.
#
# PostgreSQL refuses to run as root, so when this shell is root the
# server-side commands run as the "postgres" OS user (override with
# MM_PG_OS_USER). Clients (psql, node) run as the calling user and connect
# through the cluster's Unix socket with trust authentication.

MM_TEST_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
MM_PG_BIN=${MM_PG_BIN:-/usr/lib/postgresql/15/bin}
MM_PG_OS_USER=${MM_PG_OS_USER:-postgres}
MM_JANUS_BIN=${MM_JANUS_BIN:-/usr/bin/janus}
MM_JANUS_LIB=${MM_JANUS_LIB:-/usr/lib/x86_64-linux-gnu/janus}
MM_NODE=${MM_NODE:-node}

# State filled in by the start functions and read by mm_cleanup.
MM_PGDATA=""
MM_JANUS_PID=""
MM_JANUS_PIDS=""
MM_FAKE_PIDS=""

# mm_log prints a progress line on stderr.
mm_log() {
	printf '%s: %s\n' "${0##*/}" "$*" >&2
}

mm_die() {
	mm_log "error: $*"
	exit 1
}

# as_pg_user runs a command as the unprivileged user that owns the cluster.
as_pg_user() {
	if [ "$(id -u)" -eq 0 ]; then
		runuser -u "$MM_PG_OS_USER" -- "$@"
	else
		"$@"
	fi
}

# free_port prints a TCP port on 127.0.0.1 that was free a moment ago.
# NOTE: another process can take the port between this check and the bind;
# the start functions then fail with the bind error in their log.
free_port() {
	"$MM_NODE" -e '
		const server = require("node:net").createServer();
		server.listen(0, "127.0.0.1", () => {
			console.log(server.address().port);
			server.close();
		});'
}

# mm_make_dir DIR creates DIR, owned by the cluster's OS user when root.
mm_make_dir() {
	mkdir -p "$1"
	if [ "$(id -u)" -eq 0 ]; then
		chown "$MM_PG_OS_USER": "$1"
	fi
}

# wait_until SECONDS DESCRIPTION COMMAND... retries COMMAND every 0.1 s
# until it succeeds, and fails after SECONDS.
wait_until() {
	local seconds=$1 description=$2 deadline
	shift 2
	deadline=$(($(date +%s) + seconds))
	until "$@" >/dev/null 2>&1; do
		if [ "$(date +%s)" -ge "$deadline" ]; then
			mm_log "timed out after ${seconds}s waiting for $description"
			return 1
		fi
		sleep 0.1
	done
}

# cluster_init DIR [SETTING...] creates a cluster in DIR/data whose socket
# is DIR itself. Each SETTING is a postgresql.conf line such as
# "matchmaker.intent_ttl = 5". Sets PGHOST, PGPORT, PGUSER and PGDATABASE.
cluster_init() {
	local dir=$1 setting
	shift
	mm_make_dir "$dir"
	dir=$(cd "$dir" && pwd)
	MM_PGDATA=$dir/data
	PGHOST=$dir
	PGPORT=$(free_port)
	PGUSER=postgres
	PGDATABASE=postgres
	export PGHOST PGPORT PGUSER PGDATABASE

	as_pg_user "$MM_PG_BIN/initdb" -D "$MM_PGDATA" -U postgres \
		--auth=trust --no-sync --encoding=UTF8 --locale=C.UTF-8 \
		>"$dir/initdb.log" 2>&1 ||
		{ cat "$dir/initdb.log" >&2; mm_die "initdb failed in $MM_PGDATA"; }

	{
		echo "# Settings for the end-to-end tests."
		echo "port = $PGPORT"
		echo "listen_addresses = ''"
		echo "unix_socket_directories = '$dir'"
		echo "logging_collector = off"
		echo "log_line_prefix = '%m [%p] %b '"
		echo "fsync = off"
		echo "max_worker_processes = 16"
		for setting in "$@"; do
			echo "$setting"
		done
	} | as_pg_user tee -a "$MM_PGDATA/postgresql.conf" >/dev/null
}

# cluster_start starts the cluster made by cluster_init; its log is
# DIR/server.log.
cluster_start() {
	as_pg_user "$MM_PG_BIN/pg_ctl" -D "$MM_PGDATA" -l "$PGHOST/server.log" \
		-w -t 60 start >/dev/null ||
		{ tail -n 30 "$PGHOST/server.log" >&2; mm_die "cluster did not start"; }
}

# cluster_stop stops the cluster, by default in fast mode.
cluster_stop() {
	local mode=${1:-fast}
	[ -n "$MM_PGDATA" ] || return 0
	if [ -f "$MM_PGDATA/postmaster.pid" ]; then
		as_pg_user "$MM_PG_BIN/pg_ctl" -D "$MM_PGDATA" -m "$mode" -w stop \
			>/dev/null 2>&1 || return 1
	fi
}

# psql_q SQL runs one statement and prints unaligned, tuples-only output.
psql_q() {
	psql -X -q -A -t -v ON_ERROR_STOP=1 -c "$1"
}

# janus_start DIR [SESSION_TIMEOUT] writes a private Janus configuration to
# DIR from the templates in test/janus, starts Janus with only the
# AudioBridge plugin and the HTTP transport on 127.0.0.1, and waits until
# GET /janus/info responds. Sets MM_JANUS_URL and MM_JANUS_PID.
# SESSION_TIMEOUT is in seconds (default 60, the Janus default). Calling it
# again with another DIR starts another instance; mm_cleanup stops all.
janus_start() {
	local dir=$1 timeout=${2:-60} port template
	mkdir -p "$dir/conf" "$dir/plugins" "$dir/transports" "$dir/empty"
	dir=$(cd "$dir" && pwd)
	port=$(free_port)

	ln -sf "$MM_JANUS_LIB/plugins/libjanus_audiobridge.so" "$dir/plugins/"
	ln -sf "$MM_JANUS_LIB/transports/libjanus_http.so" "$dir/transports/"
	for template in "$MM_TEST_DIR"/janus/*.jcfg; do
		sed -e "s|@CONFIG_DIR@|$dir/conf|g" \
			-e "s|@PLUGINS_DIR@|$dir/plugins|g" \
			-e "s|@TRANSPORTS_DIR@|$dir/transports|g" \
			-e "s|@EMPTY_DIR@|$dir/empty|g" \
			-e "s|@SESSION_TIMEOUT@|$timeout|g" \
			-e "s|@HTTP_PORT@|$port|g" \
			"$template" >"$dir/conf/${template##*/}"
	done

	# -C and -F keep Janus away from /etc/janus. -P names the same plugin
	# folder as the configuration file, so no other folder is ever read.
	"$MM_JANUS_BIN" -C "$dir/conf/janus.jcfg" -F "$dir/conf" \
		-P "$dir/plugins" -o >"$dir/janus.log" 2>&1 &
	MM_JANUS_PID=$!
	MM_JANUS_PIDS="$MM_JANUS_PIDS $MM_JANUS_PID"
	MM_JANUS_URL="http://127.0.0.1:$port/janus"
	export MM_JANUS_URL

	if ! wait_until 30 "Janus on port $port" janus_answers; then
		tail -n 30 "$dir/janus.log" >&2
		mm_die "Janus did not start, see $dir/janus.log"
	fi
}

# janus_answers succeeds when the started Janus is alive and serves info.
janus_answers() {
	kill -0 "$MM_JANUS_PID" 2>/dev/null &&
		curl -fsS --max-time 2 "$MM_JANUS_URL/info" >/dev/null
}

# mm_start_fake NAME SCRIPT LOG starts a Node fake on an ephemeral
# loopback port and waits until it prints its port. Sets MM_FAKE_BASE to
# its base URL. The fake picks the port itself, so there is no race for it.
# --expose-gc lets a fake collect its garbage when it is reset.
mm_start_fake() {
	local name=$1 script=$2 log=$3 port
	"$MM_NODE" --expose-gc "$script" --port 0 >"$log" 2>&1 &
	MM_FAKE_PIDS="$MM_FAKE_PIDS $!"
	wait_until 15 "$name to listen" grep -q '^listening ' "$log" ||
		{ cat "$log" >&2; mm_die "$name did not start"; }
	port=$(sed -n 's/^listening 127\.0\.0\.1:\([0-9]*\)$/\1/p' "$log" | head -n 1)
	[ -n "$port" ] || mm_die "$name printed no port, see $log"
	MM_FAKE_BASE="http://127.0.0.1:$port"
}

# push_start DIR starts the fake push receiver. Sets MM_PUSH_BASE (for
# /deliveries and /control) and MM_PUSH_URL (the URL the worker posts to).
push_start() {
	mkdir -p "$1"
	mm_start_fake "push receiver" "$MM_TEST_DIR/fake/push-receiver.js" \
		"$1/push-receiver.log"
	MM_PUSH_BASE=$MM_FAKE_BASE
	MM_PUSH_URL="$MM_PUSH_BASE/push"
	export MM_PUSH_BASE MM_PUSH_URL
}

# room_service_start DIR starts the fake "http" room provider. Sets
# MM_ROOMS_BASE and MM_ROOMS_URL (the URL the worker posts to).
room_service_start() {
	mkdir -p "$1"
	mm_start_fake "room service" "$MM_TEST_DIR/fake/room-service.js" \
		"$1/room-service.log"
	MM_ROOMS_BASE=$MM_FAKE_BASE
	MM_ROOMS_URL="$MM_ROOMS_BASE/rooms"
	export MM_ROOMS_BASE MM_ROOMS_URL
}

# mm_stop_process PID sends SIGTERM, waits up to 10 s for the process to
# exit, then sends SIGKILL.
mm_stop_process() {
	local pid=$1 tries=0
	kill "$pid" 2>/dev/null || return 0
	while kill -0 "$pid" 2>/dev/null && [ "$tries" -lt 100 ]; do
		sleep 0.1
		tries=$((tries + 1))
	done
	kill -9 "$pid" 2>/dev/null || true
	wait "$pid" 2>/dev/null || true
}

# mm_cleanup stops everything the helpers started. The cluster is stopped
# in immediate mode because its contents are thrown away. Every step
# ignores errors, so that a failed step under "set -e" cannot stop the rest.
mm_cleanup() {
	local pid
	cluster_stop immediate || true
	for pid in $MM_JANUS_PIDS; do
		mm_stop_process "$pid"
	done
	for pid in $MM_FAKE_PIDS; do
		mm_stop_process "$pid"
	done
	MM_PGDATA=""
	MM_JANUS_PID=""
	MM_JANUS_PIDS=""
	MM_FAKE_PIDS=""
}

# mm_setup_trap runs mm_cleanup on exit and turns INT and TERM into an
# exit, so the cleanup also runs when the run is interrupted.
mm_setup_trap() {
	trap mm_cleanup EXIT
	trap 'exit 130' INT
	trap 'exit 143' TERM
}
