# Rolling schema changes, the cases that diverged silently (issue 19):
#
# 1. A column dropped on every node and added again under its old name,
#    one node first: a value written there before the others have the
#    column again reaches them, as for a column that never existed.
# 2. ADD COLUMN with a default that each node would compute on its own
#    (clock_timestamp(), now(), random(), gen_random_uuid(), a serial, an
#    identity) on a tracked table is refused with the procedure in the
#    hint, and that procedure converges.
# 3. A node that writes a new column before its next sync fills the column
#    in keeps its own, later, value.
#
# Three nodes pull from each other with their sync workers running (no
# prune: the nodes' change logs are compared).
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
	$n{$x} = replstamp_node($x, template => 1, conf => ['replstamp.prune_interval = 0', 'replstamp.replicate_ddl = off'], sql => q{
		CREATE EXTENSION replstamp;
		CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL, old text);
		SELECT replstamp.track('t');
		CREATE TABLE untracked (id int PRIMARY KEY);
		INSERT INTO untracked VALUES (1);
	});
}
sub sq { my ($node, $sql) = @_; return $node->safe_psql('postgres', $sql); }
for my $x (@names)
{
	for my $y (@names)
	{
		add_peer($n{$x}, $y, $n{$y}) unless $x eq $y;
	}
}
# The sync workers, from now on (started with the extension in place).
set_guc($n{$_}, 'replstamp.sync_interval', 1) for @names;
sq($n{a}, "INSERT INTO t SELECT g, g, 'old ' || g FROM generate_series(1, 20) g");
wait_converged([ map { $n{$_} } @names ], ['t'], 'rows written before any DDL');

# This node's last own change, as a condition that a node holds it.
sub holds_last_of
{
	my ($x) = @_;
	my $stamp = sq($n{$x},
		"SELECT format('replica_id = %L AND serial = %s', replica_id, max(serial)) FROM replstamp.changes "
		  . "WHERE replica_id = (SELECT replica_id FROM replstamp.node) GROUP BY replica_id");
	return "SELECT EXISTS (SELECT 1 FROM replstamp.changes WHERE $stamp)";
}

# --- 1. A dropped column added again under its old name --------------------

# The column "old" is dropped on every node, one after the other; then every
# node pulls from every other, and each one sees that the drop is done:
# replstamp.tracked_table names the column neither among the columns the apply
# saw nor among the dropped ones.
# b, which still has it when a has dropped it, writes it once more: a must
# not keep that old value for a column of that name added later.
sq($n{a}, 'ALTER TABLE t DROP COLUMN old');
sq($n{b}, "UPDATE t SET v = v + 100, old = 'written on b before its drop' WHERE id = 5");
$n{a}->poll_query_until('postgres', holds_last_of('b')) or die "a does not pull b's change";
sq($n{$_}, 'ALTER TABLE t DROP COLUMN old') for qw(b c);
sq($n{c}, 'UPDATE t SET v = v + 100 WHERE id = 2');
wait_converged([ map { $n{$_} } @names ], ['t'], 'after old was dropped everywhere');
for my $x (@names)
{
	ok($n{$x}->poll_query_until('postgres',
			"SELECT NOT EXISTS (SELECT 1 FROM replstamp.tracked_table "
			  . "WHERE columns IS NULL OR 'old' = ANY (columns) OR 'old' = ANY (dropped_columns))"),
		"$x: once every peer lacks it and $x holds what they wrote before, the dropped name is forgotten");
}

# a adds "old" again, and writes it; b and c pull that while they lack it.
# The control: "fresh", a name no node ever had, the same steps.
sq($n{a}, 'ALTER TABLE t ADD COLUMN old text, ADD COLUMN fresh text');
sq($n{a}, "UPDATE t SET old = 'again on a', fresh = 'set on a' WHERE id = 1");
sq($n{a}, "INSERT INTO t (id, v, fresh, old) VALUES (21, 21, 'new row on a', 'new row on a')");
my $holds = holds_last_of('a');
$n{$_}->poll_query_until('postgres', $holds) or die "$_ does not pull a's change" for qw(b c);
is(sq($n{b}, 'SELECT count(*) FROM t WHERE id IN (1, 21)'), '2',
	'b applied the changes a made while b lacked the column');

sq($n{$_}, 'ALTER TABLE t ADD COLUMN old text, ADD COLUMN fresh text') for qw(b c);
# A change b makes to another row meanwhile also carries the column.
sq($n{b}, "UPDATE t SET old = 'again on b' WHERE id = 3");
wait_converged([ map { $n{$_} } @names ], ['t'], 'after old was added again on every node');
for my $x (@names)
{
	is(sq($n{$x}, 'SELECT fresh FROM t WHERE id = 1'), 'set on a',
		"$x: the control, a column that never existed: a's value");
	is(sq($n{$x}, 'SELECT old FROM t WHERE id = 1'), 'again on a',
		"$x: the value a wrote into the added-again column, as into the new one");
	is(sq($n{$x}, 'SELECT old FROM t WHERE id = 21'), 'new row on a',
		"$x: the added-again column of a row a inserted meanwhile");
	is(sq($n{$x}, "SELECT count(*) FROM t WHERE old IS NOT NULL"), '3',
		"$x: the rows nobody wrote since the drop have no value in it (the old values stay gone)");
}

# --- 2. ADD COLUMN with a default each node computes on its own ------------

for my $default ('clock_timestamp()', 'now()', 'random()', 'gen_random_uuid()',
	"(now() + '1 day')", 'CURRENT_TIMESTAMP')
{
	my ($type) = $default =~ /random\(\)/ ? ('float8') : $default =~ /uuid/ ? ('uuid') : ('timestamptz');
	my ($rc, $out, $err) =
	  $n{a}->psql('postgres', "ALTER TABLE t ADD COLUMN x $type DEFAULT $default");
	isnt($rc, 0, "ADD COLUMN ... DEFAULT $default on a tracked table is refused");
	like($err,
		qr/ERROR:  cannot add column "x" to table public\.t with a default that can differ between nodes/,
		"... saying why ($default)");
}
my ($rc, $out, $err) = $n{b}->psql('postgres', 'ALTER TABLE t ADD COLUMN x serial');
like($err, qr/cannot add column "x"/, 'a serial column is refused');
like($err, qr/HINT:  Add the column without a default, then set the default with ALTER TABLE \.\.\. ALTER COLUMN \.\.\. SET DEFAULT, on every node; to fill in the rows that exist, UPDATE them on one node only/,
	'the hint gives the procedure');
($rc, $out, $err) = $n{b}->psql('postgres', 'ALTER TABLE t ADD COLUMN x int GENERATED ALWAYS AS IDENTITY');
like($err, qr/cannot add column "x"/, 'an identity column is refused');
($rc, $out, $err) = $n{b}->psql('postgres',
	"CREATE DOMAIN stamped AS timestamptz DEFAULT now(); ALTER TABLE t ADD COLUMN x stamped");
like($err, qr/cannot add column "x"/, 'a column of a domain whose default is now() is refused');
is(sq($n{$_}, "SELECT count(*) FROM pg_attribute WHERE attrelid = 't'::regclass AND attname = 'x'"), '0',
	"$_: no column was added") for qw(a b);

# What stays allowed: constants, immutable expressions, generation
# expressions, no default, untracked tables.
sq($n{c}, "ALTER TABLE untracked ADD COLUMN at timestamptz DEFAULT clock_timestamp()");
pass('an untracked table takes a volatile default');
for my $x (@names)
{
	sq($n{$x}, "ALTER TABLE t ADD COLUMN k text DEFAULT 'none', ADD COLUMN two int DEFAULT 1 + 1, "
		  . "ADD COLUMN dbl int GENERATED ALWAYS AS (v * 2) STORED");
}
pass('constant and immutable defaults and a generated column are accepted');

# The procedure of the hint, rolling: the column without a default and the
# default in the same statement (the rows get NULL), on each node; the
# rows that exist filled in on one node; a new row on another.
for my $x (@names)
{
	sq($n{$x}, 'ALTER TABLE t ADD COLUMN at timestamptz, ALTER COLUMN at SET DEFAULT clock_timestamp(), '
		  . 'ADD COLUMN u uuid, ALTER COLUMN u SET DEFAULT gen_random_uuid()');
}
pass('ADD COLUMN without a default, SET DEFAULT in the same statement: accepted');
is(sq($n{b}, 'SELECT count(*) FROM t WHERE at IS NOT NULL OR u IS NOT NULL'), '0',
	'the existing rows got no value from the default');
sq($n{a}, 'UPDATE t SET at = clock_timestamp(), u = gen_random_uuid() WHERE at IS NULL');
sq($n{b}, 'INSERT INTO t (id, v) VALUES (100, 100)');
wait_converged([ map { $n{$_} } @names ], ['t'], 'after the procedure of the hint');
is(sq($n{c}, 'SELECT count(*) FROM t WHERE at IS NULL OR u IS NULL'), '0',
	'c: every row has its values, the ones written on a or on b');

# --- 3. A value written here before the fill of a new column runs ---------

# c lacks z when it pulls a's value of it; c then adds z and writes it in
# that row before its next sync fills the column in: c's own, later, value
# stays (the fill reads the row's version after c's own changes).  c's sync
# worker is stopped so that the order is certain.
set_guc($n{c}, 'replstamp.sync_interval', 0);
$n{c}->poll_query_until('postgres',
	"SELECT count(*) = 0 FROM pg_stat_activity WHERE backend_type = 'replstamp sync'")
  or die "the sync worker of c does not stop";
sq($n{$_}, 'ALTER TABLE t ADD COLUMN z text') for qw(a b);
sq($n{a}, "UPDATE t SET z = 'from a' WHERE id = 7");
sq($n{c}, 'SELECT replstamp.sync_all()');
sq($n{c}, 'ALTER TABLE t ADD COLUMN z text');
sq($n{c}, "UPDATE t SET z = 'from c, later' WHERE id = 7");
sq($n{c}, 'SELECT replstamp.sync_all()');
is(sq($n{c}, 'SELECT z FROM t WHERE id = 7'), 'from c, later',
	"c: the fill of the new column keeps c's own later value");
set_guc($n{c}, 'replstamp.sync_interval', 1);
wait_converged([ map { $n{$_} } @names ], ['t'], 'after a local write before the fill');

$_->stop for values %n;
done_testing();
