# Tables without a primary key replicate exactly between three nodes
# written at the same time: one tracked by a unique index of NOT NULL
# columns (inserts, updates of the key, deletes), one with neither, given
# a row ID by track(..., row_id => true), whose duplicate rows stay as many
# rows everywhere, an UPDATE or DELETE of one of them touching that one
# only.  A rotation moves the row IDs to the new replica ID's block.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use ReplstampTest;

my @names = qw(a b c);
my %n;
for my $x (@names)
{
	$n{$x} = replstamp_node($x, template => 1, conf => ['max_connections = 30'], sql => q{
		CREATE EXTENSION replstamp;
		CREATE TABLE u (code text NOT NULL, v int NOT NULL, node text);
		CREATE UNIQUE INDEX u_code ON u (code);
		SELECT replstamp.track('u');
		CREATE TABLE d (v text, n int NOT NULL DEFAULT 0);
		SELECT replstamp.track('d', row_id => true);
		CREATE SEQUENCE ks;
		CREATE TABLE pre (v text);
	});
}
sub sq { my ($node, $sql) = @_; return $node->safe_psql('postgres', $sql); }
sub sync_round { sq($n{$_}, 'SELECT replstamp.sync_all()') for @names; return; }

# A table with rows, duplicates among them, on a only: tracked there with
# row IDs and backfill; b and c track it empty, and get its rows.
sq($n{a}, "INSERT INTO pre SELECT 'p' || (g % 3) FROM generate_series(1, 30) g");
sq($n{a}, "SELECT replstamp.track('pre', row_id => true, backfill => true)");
sq($n{$_}, "SELECT replstamp.track('pre', row_id => true)") for qw(b c);
$n{a}->poll_query_until('postgres',
	"SELECT backfill = 'done' FROM replstamp.tracked_table WHERE relation = 'public.pre'")
  or die 'the backfill of pre does not end';
add_mesh(map { $n{$_} } @names);
sync_round();
is(sq($n{$_}, "SELECT string_agg(v || ':' || c, ',' ORDER BY v) FROM (SELECT v, count(*) AS c FROM pre GROUP BY v) r"),
	'p0:10,p1:10,p2:10', "$_: the rows a had before tracking, with their duplicates") for @names;

is(sq($n{a}, 'SELECT key_index FROM replstamp.tracked_tables WHERE relation = \'u\'::regclass'), 'u_code',
	'u is tracked by its unique index');

# (a) A key update of a unique-index table reaches every node as one row.
sq($n{a}, "INSERT INTO u VALUES ('x1', 5, 'a')");
sync_round();
sq($n{b}, "UPDATE u SET code = 'x2' WHERE code = 'x1'");
sync_round();
sync_round();
is(sq($n{$_}, "SELECT string_agg(code || '=' || v, ',' ORDER BY code) FROM u WHERE code LIKE 'x%'"), 'x2=5',
	"$_: the key update replaced the row") for @names;

# (b) Three identical rows; b updates one, c then deletes one it did not update.
sq($n{a}, "INSERT INTO d (v) VALUES ('dup'), ('dup'), ('dup')");
sync_round();
is(sq($n{$_}, "SELECT count(*) FROM d WHERE v = 'dup'"), '3', "$_: three identical rows are three rows") for @names;
sq($n{b}, "UPDATE d SET n = 1 WHERE ctid = (SELECT ctid FROM d WHERE v = 'dup' LIMIT 1)");
sync_round();
sq($n{c}, "DELETE FROM d WHERE ctid = (SELECT ctid FROM d WHERE v = 'dup' AND n = 0 LIMIT 1)");
sync_round();
sync_round();
is(sq($n{$_}, "SELECT string_agg(n::text, ',' ORDER BY n) FROM d WHERE v = 'dup'"), '0,1',
	"$_: the update and the delete of one duplicate touched that one only") for @names;

# Every node writes both tables at once while the sync workers pull.
for my $x (@names)
{
	sq($n{$x}, 'ALTER SYSTEM SET replstamp.sync_interval = 1');
	sq($n{$x}, 'SELECT pg_reload_conf()');
}
my @bench;
for my $x (@names)
{
	my $script = "$PostgreSQL::Test::Utils::tmp_check/nopk_$x.sql";
	open(my $fh, '>', $script) or die;
	# Shared keys s1..s30 conflict between nodes; keys m<node>-<n> are one
	# node's and have their key updated.  In d, rows of five values are
	# inserted twice at a time, and one of a value's duplicates updated or
	# deleted by its ctid, as a user without the row ID would.
	print $fh <<"EOF";
\\set k random(1, 30)
\\set j random(0, 4)
INSERT INTO u VALUES ('s' || :k, 1, '$x') ON CONFLICT (code) DO UPDATE SET v = u.v + 1, node = '$x';
INSERT INTO u VALUES ('m$x-' || nextval('ks'), :k, '$x');
UPDATE u SET code = 'm$x-' || nextval('ks') WHERE code = (SELECT code FROM u WHERE code LIKE 'm$x-%' ORDER BY code LIMIT 1 OFFSET :j);
DELETE FROM u WHERE code = 's' || :k AND :j = 0;
INSERT INTO d (v) VALUES ('v' || :j), ('v' || :j);
UPDATE d SET n = n + 1 WHERE ctid = (SELECT ctid FROM d WHERE v = 'v' || ((:j + 1) % 5) LIMIT 1);
DELETE FROM d WHERE ctid = (SELECT ctid FROM d WHERE v = 'v' || ((:j + 2) % 5) AND :k % 3 = 0 LIMIT 1);
EOF
	close $fh;
	push @bench, IPC::Run::start(
		[ 'pgbench', '-n', '-c', '2', '-T', '5', '-f', $script,
		  '-h', $n{$x}->host, '-p', $n{$x}->port, 'postgres' ],
		'>', "$PostgreSQL::Test::Utils::tmp_check/nopk_$x.log", '2>&1');
}
$_->finish for @bench;
for my $x (@names)
{
	my $log = slurp_file("$PostgreSQL::Test::Utils::tmp_check/nopk_$x.log");
	my ($tx) = $log =~ /number of transactions actually processed: (\d+)/;
	ok(defined $tx && $tx > 50 && $log !~ /aborted/, "pgbench on $x committed " . ($tx // 0) . ' transactions, none aborted')
	  or diag($log);
}
for my $x (@names)
{
	sq($n{$x}, 'ALTER SYSTEM SET replstamp.sync_interval = 0');
	sq($n{$x}, 'SELECT pg_reload_conf()');
}
for my $x (@names)
{
	$n{$x}->poll_query_until('postgres',
		"SELECT count(*) = 0 FROM pg_stat_activity WHERE backend_type = 'replstamp sync'")
	  or die "sync worker of $x does not stop";
}
sync_round() for 1 .. 2;
is(sq($n{$_}, 'SELECT count(*) FROM replstamp.peers WHERE last_error IS NOT NULL'), '0',
	"$_: the last syncs went through") for @names;

# The same rows everywhere, row IDs included; and the same multiset of
# values without them (counts per value).
wait_converged([ map { $n{$_} } @names ], [ 'u', 'd', 'pre' ], 'after concurrent writers');
my $multiset = 'SELECT v, n, count(*) FROM d GROUP BY v, n';
my $ms_a = sq($n{a}, "SELECT string_agg(r::text, ',' ORDER BY r::text) FROM ($multiset) r");
is(sq($n{$_}, "SELECT string_agg(r::text, ',' ORDER BY r::text) FROM ($multiset) r"), $ms_a,
	"$_: the same count of each duplicate as a") for qw(b c);
ok(sq($n{a}, "SELECT count(*) FROM d") > 10 && sq($n{a}, "SELECT count(*) > count(DISTINCT (v, n)) FROM d") eq 't',
	'd holds duplicate rows');
ok(sq($n{a}, "SELECT count(DISTINCT node) FROM u WHERE code LIKE 'm%'") eq '3'
	  && sq($n{a}, "SELECT count(*) FROM replstamp.changes WHERE relation = 'public.u' AND op = 'UPDATE' "
		  . "AND pk->>'code' <> row_image->>'code'") > 0,
	'every node wrote u, keys were updated');
# Each node's row IDs are of its own replica ID's block.
is(sq($n{a}, "SELECT count(*) FROM d WHERE NOT EXISTS (SELECT 1 FROM replstamp.replica_history h "
		. "WHERE d.replstamp_row_id <@ replstamp.sequence_block(h.replica_id, 'bigint'))
		  AND NOT EXISTS (SELECT 1 FROM replstamp.vector v WHERE d.replstamp_row_id <@ replstamp.sequence_block(v.replica_id, 'bigint'))"),
	'0', 'every row ID lies in the block of the replica ID that wrote it');

# verify() compares them by their keys, content included.
is(sq($n{a}, "SELECT count(*) FROM replstamp.verify('$_', deep => true)"), '0',
	"verify() against $_ finds no difference") for qw(b c);

# (c) A rotation moves the row ID sequence to the new ID's block: a
# restored copy (which rotates) never hands out a row ID again.
my $old = sq($n{a}, 'SELECT replica_id FROM replstamp.node');
my $new = sq($n{a}, "SELECT replstamp.rotate('test')");
sq($n{a}, "INSERT INTO d (v) VALUES ('after rotation')");
is(sq($n{a}, "SELECT replstamp_row_id <@ replstamp.sequence_block('$new', 'bigint') "
		. "AND NOT replstamp_row_id <@ replstamp.sequence_block('$old', 'bigint') FROM d WHERE v = 'after rotation'"),
	't', 'after a rotation, new row IDs come from the new replica ID\'s block');
sync_round();
is(sq($n{c}, "SELECT count(*) FROM d WHERE v = 'after rotation'"), '1', 'and replicate');

# Key columns that differ between nodes stop the sync at the change, named.
sq($n{a}, "CREATE TABLE mism (x int NOT NULL, y int NOT NULL); CREATE UNIQUE INDEX mism_x ON mism (x); "
	. "SELECT replstamp.track('mism'); INSERT INTO mism VALUES (1, 2)");
sq($n{b}, "CREATE TABLE mism (x int NOT NULL, y int NOT NULL); CREATE UNIQUE INDEX mism_y ON mism (y); "
	. "SELECT replstamp.track('mism')");
my ($ret, $out, $err) = $n{b}->psql('postgres', "SELECT replstamp.sync('a')");
like($err, qr/the row key of table public\.mism differs between peer "a" and this node\nDETAIL:  The peer identifies its rows by \(x\), this node by \(y\)\./,
	'a key of other columns stops the sync, named');

$_->stop for values %n;
done_testing();
