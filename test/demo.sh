#!/usr/bin/env bash
# The replstamp story on three temporary nodes, in under a minute:
# replicate, back up, lose a node, restore it, watch it rotate its replica
# ID and re-converge; put a node back in time without the mark and watch
# its peers catch it -- and what happens without either.
#
# Servers run on private ports with sockets in a private directory under
# /tmp, as the user postgres when started as root, and are removed at the
# end, even on error.
#
# Copyright (c) 2026, the replstamp authors
set -eu
SRCDIR=$(cd "$(dirname "$0")/.." && pwd)
. "$SRCDIR/test/lib.sh"
ensure_packages
drop_root "$SRCDIR/test/demo.sh" "$@"

WORK=$(mktemp -d /tmp/replstamp-demo.XXXXXX)
BASEPORT=$((6500 + RANDOM % 1000))
NODES=""
cleanup() {
	for n in $NODES; do pg_ctl -D "$WORK/$n" -m immediate stop >/dev/null 2>&1 || true; done
	rm -rf "$WORK"
}
trap cleanup EXIT

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
say_() { printf '   %s\n' "$*"; }

printf 'Building replstamp into a private copy of PostgreSQL ... '
BIN=$(private_install "$WORK" 2>"$WORK/build.log") || { cat "$WORK/build.log"; exit 1; }
export PATH="$BIN:$PATH" PGHOST="$WORK" PGDATABASE=postgres
unset PGUSER PGSERVICE PGPORT
echo done

port_of() { case "$1" in a) echo $BASEPORT ;; b) echo $((BASEPORT + 1)) ;; c) echo $((BASEPORT + 2)) ;; a_restored) echo $((BASEPORT + 3)) ;; a_norotate) echo $((BASEPORT + 4)) ;; esac; }
conn() { echo "host=$WORK port=$(port_of "$1") dbname=postgres"; }
sql() { local n="$1"; shift; psql -X -q -p "$(port_of "$n")" -v ON_ERROR_STOP=1 "$@"; }
val() { sql "$1" -At -c "$2"; }

start_node() {
	local n="$1"
	cat >>"$WORK/$n/postgresql.conf" <<EOF
port = $(port_of "$n")
listen_addresses = ''
unix_socket_directories = '$WORK'
shared_preload_libraries = 'replstamp'
wal_level = replica
max_wal_senders = 4
EOF
	pg_ctl -D "$WORK/$n" -l "$WORK/$n.log" -w start >/dev/null
	NODES="$NODES $n"
}

step "Three nodes, each with replstamp, each tracking the table accounts"
for n in a b c; do
	initdb -D "$WORK/$n" -A trust >/dev/null
	start_node "$n"
	sql "$n" -c "CREATE EXTENSION replstamp" \
		-c "CREATE TABLE accounts (id int PRIMARY KEY, owner text, balance int)" \
		-c "SELECT replstamp.track('accounts')" >/dev/null
	say_ "node $n: replica ID $(val "$n" 'SELECT replica_id FROM replstamp.node')"
done
# a <-> b <-> c
sql a -c "SELECT replstamp.add_peer('b', '$(conn b)')" >/dev/null
sql b -c "SELECT replstamp.add_peer('a', '$(conn a)')" -c "SELECT replstamp.add_peer('c', '$(conn c)')" >/dev/null
sql c -c "SELECT replstamp.add_peer('b', '$(conn b)')" >/dev/null
say_ "peers: a <-> b <-> c (c hears of a only through b)"

step "Every change gets a stamp (replica_id, serial)"
sql a -c "INSERT INTO accounts VALUES (1, 'ann', 100), (2, 'bob', 50)"
sql c -c "INSERT INTO accounts VALUES (3, 'cyd', 70)"
sql a -c "SELECT left(replica_id::text, 8) AS replica, serial, relation, op, row_image FROM replstamp.changes ORDER BY serial"

step "Replicate: each node pulls what its peers have and it lacks"
for n in b a c b a; do say_ "$n: SELECT replstamp.sync_all() -> $(val "$n" 'SELECT replstamp.sync_all()') changes applied"; done
for n in a b c; do say_ "node $n: $(val "$n" "SELECT string_agg(format('%s=%s', owner, balance), ' ' ORDER BY id) FROM accounts")"; done

step "Back up node a: CALL replstamp.backup() marks it 'backup' while it copies"
sql a -c "CALL replstamp.backup('$WORK/backup', label => 'demo backup')" 2>&1 | grep -E "marked|complete" | sed 's/^.*NOTICE: */   /'
say_ "pg_verifybackup: $(pg_verifybackup "$WORK/backup" 2>&1)"
say_ "live node a, state: $(val a 'SELECT state FROM replstamp.node'); the backup says: $(sed -n 's/^LABEL: //p' "$WORK/backup/backup_label") with state 'backup' inside"

step "After the backup, a makes changes; b pulls them; then a is lost"
sql a -c "UPDATE accounts SET balance = balance - 30 WHERE owner = 'ann'" -c "INSERT INTO accounts VALUES (4, 'dee', 10)"
say_ "b pulls $(val b "SELECT replstamp.sync('a')") changes from a"
pg_ctl -D "$WORK/a" -m immediate stop >/dev/null
say_ "node a is gone (immediate shutdown, disk lost)"
OLD_ID=$(val b "SELECT replica_id FROM replstamp.changes WHERE (pk->>'id')::int = 4")

restore() {
	local n="$1" extra="$2"
	cp -a "$WORK/backup" "$WORK/$n"
	sed -i '/^port = /d' "$WORK/$n/postgresql.conf"
	[ -n "$extra" ] && echo "$extra" >>"$WORK/$n/postgresql.auto.conf"
	start_node "$n"
	sql "$n" -c "UPDATE replstamp.peer SET conninfo = '$(conn b)' WHERE name = 'b'" >/dev/null
}

step "Restore a from the backup: it was 'backup' at snapshot time, so it rotates"
restore a_restored ""
sql a_restored -c "INSERT INTO accounts VALUES (5, 'eve', 5)"
sql a_restored -c "SELECT left(replica_id::text, 8) AS replica_id, split_part(minted_reason, ';', 1) AS why, retired_at IS NOT NULL AS retired FROM replstamp.replica_history ORDER BY minted_at"
say_ "the server log says: $(grep -h 'retired replica ID' "$WORK/a_restored.log" | sed 's/.*LOG: *//' | head -1)"
say_ "a's change after restore carries $(val a_restored "SELECT left(replica_id::text, 8) FROM replstamp.changes WHERE (pk->>'id')::int = 5"); the old ID was ${OLD_ID:0:8}"

step "Re-converge: b pulls the new changes, the restored a pulls back what it lost"
sql b -c "SELECT replstamp.drop_peer('a')" -c "SELECT replstamp.add_peer('a', '$(conn a_restored)')" >/dev/null
for n in b a_restored c b a_restored c; do
	say_ "$n: sync_all() -> $(val "$n" 'SELECT replstamp.sync_all()') changes applied"
done
for n in a_restored b c; do say_ "node $n: $(val "$n" "SELECT string_agg(format('%s=%s', owner, balance), ' ' ORDER BY id) FROM accounts")"; done
same=$( [ "$(val a_restored 'SELECT string_agg(format($$%s%s$$, id, balance), $$,$$ ORDER BY id) FROM accounts')" = \
          "$(val b 'SELECT string_agg(format($$%s%s$$, id, balance), $$,$$ ORDER BY id) FROM accounts')" ] && echo yes || echo NO)
say_ "restored a and b hold the same rows: $same"

step "A node put back in time without the mark (a VM snapshot): its peers catch it"
pg_ctl -D "$WORK/c" -m fast stop >/dev/null
cp -a "$WORK/c" "$WORK/c_snapshot"
pg_ctl -D "$WORK/c" -l "$WORK/c.log" -w start >/dev/null
sql c -c "INSERT INTO accounts VALUES (7, 'gil', 7)"
say_ "c takes a snapshot, then writes gil: b pulls $(val b "SELECT replstamp.sync('c')") change"
pg_ctl -D "$WORK/c" -m immediate stop >/dev/null
rm -rf "$WORK/c"; mv "$WORK/c_snapshot" "$WORK/c"
pg_ctl -D "$WORK/c" -l "$WORK/c.log" -w start >/dev/null
sql c -c "INSERT INTO accounts VALUES (8, 'hal', 8)"
say_ "c is put back to the snapshot (gil is gone there) and writes hal: $(val c "SELECT format('(%s, %s)', left(replica_id::text, 8), serial) FROM replstamp.changes WHERE (pk->>'id')::int = 8"), the stamp gil had"
say_ "b syncs from c: $(val b "SELECT replstamp.sync('c')" 2>/dev/null) change; c's log: $(grep -h 'retired replica ID' "$WORK/c.log" | tail -1 | sed 's/.*LOG: *//')"
say_ "c syncs from b: $(val c "SELECT replstamp.sync('b')") changes (gil comes back)"
for n in b c; do say_ "node $n: $(val "$n" "SELECT string_agg(owner, ' ' ORDER BY id) FROM accounts")"; done

step "Without the rotation and the peers' check: the USN rollback"
restore a_norotate "replstamp.rotate_on_restore = off
replstamp.check_histories = off"
sql b -c "ALTER SYSTEM SET replstamp.check_histories = off" -c "SELECT pg_reload_conf()" >/dev/null
sql a_norotate -c "INSERT INTO accounts VALUES (6, 'fay', 6)"
say_ "the server log warns: $(grep -h 'keeps replica ID' "$WORK/a_norotate.log" | sed 's/.*WARNING: *//' | head -1)"
say_ "fay's change is stamped $(val a_norotate "SELECT format('(%s, %s)', left(replica_id::text, 8), serial) FROM replstamp.changes WHERE (pk->>'id')::int = 6")"
sql b -c "SELECT replstamp.add_peer('a_norotate', '$(conn a_norotate)')" >/dev/null
say_ "b pulls $(val b "SELECT replstamp.sync('a_norotate')") changes from it: b's vector says it has ${OLD_ID:0:8} up to serial $(val b "SELECT serial FROM replstamp.vector WHERE replica_id = '$OLD_ID'")"
say_ "b has fay: $(val b "SELECT CASE WHEN count(*) = 0 THEN 'NO - silently skipped, the nodes have diverged' ELSE 'yes' END FROM accounts WHERE id = 6")"

printf '\nDone; the temporary servers are being removed.\n'
