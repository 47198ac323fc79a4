# Day-to-day operations, part 2: rolling schema changes.  Three nodes
# write the same table while their sync workers pull from each other every
# second; a column is added on one node after the other, each node writing
# the new column as soon as it has it, then dropped one node after the
# other.  Replication never stops, and once the writing stops and a last
# round of syncs has run, every node holds the same rows, with the new
# column's values.  A type change that cannot be converted stays a clear
# error.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);
use ReplstampTest;

my @names = qw(a b c);
my %n;
for my $x (@names)
{
	$n{$x} = replstamp_node($x, conf => ['max_connections = 30', 'replstamp.prune_interval = 0',
		# by hand, node after node: schema changes stay local (1.2)
		'replstamp.replicate_ddl = off'], sql => q{
		CREATE EXTENSION replstamp;
		CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL);
		SELECT replstamp.track('t');
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
sq($n{a}, 'INSERT INTO t SELECT g, 0 FROM generate_series(1, 500) g');
sq($n{b}, "SELECT replstamp.sync('a')");
sq($n{c}, "SELECT replstamp.sync('a')");

sub set_interval
{
	my ($seconds) = @_;
	for my $x (@names)
	{
		sq($n{$x}, "ALTER SYSTEM SET replstamp.sync_interval = $seconds; SELECT pg_reload_conf()");
	}
	return if $seconds > 0;
	for my $x (@names)
	{
		$n{$x}->poll_query_until('postgres',
			"SELECT count(*) = 0 FROM pg_stat_activity WHERE backend_type = 'replstamp sync'")
		  or die "the sync worker of $x does not stop";
	}
}

# pgbench in the background on node $x, with a script; returns the
# handle and the log's name.
my $runs = 0;
sub bench
{
	my ($x, $seconds, $script) = @_;
	$runs++;
	my $file = "$PostgreSQL::Test::Utils::tmp_check/rolling_$runs.sql";
	my $log = "$PostgreSQL::Test::Utils::tmp_check/rolling_$runs.log";
	open(my $fh, '>', $file) or die;
	print $fh $script;
	close $fh;
	my $h = IPC::Run::start(
		[ 'pgbench', '-n', '-c', '2', '-T', $seconds, '-f', $file,
		  '-h', $n{$x}->host, '-p', $n{$x}->port, 'postgres' ],
		'>', $log, '2>&1');
	return [ $h, $log, $x ];
}
# Wait for a pgbench run and check it never failed.
sub bench_done
{
	my ($run, $what) = @_;
	$run->[0]->finish;
	my $out = slurp_file($run->[1]);
	my ($tx) = $out =~ /number of transactions actually processed: (\d+)/;
	ok(defined $tx && $tx > 0 && $out !~ /aborted|ERROR/,
		"$run->[2]: pgbench $what committed " . ($tx // 0) . ' transactions, none failed')
	  or diag($out);
	return;
}

# Writes of v only, on every key, and inserts and deletes of keys 501-550.
my $plain = q{\set id random(1, 550)
\set gone random(501, 550)
INSERT INTO t (id, v) VALUES (:id, 1) ON CONFLICT (id) DO UPDATE SET v = t.v + 1;
DELETE FROM t WHERE id = :gone AND :id % 7 = 0;
};
# Writes of the new column w, on a node that has it.
sub with_w
{
	my ($x) = @_;
	return qq{\\set id random(1, 550)
INSERT INTO t (id, v, w) VALUES (:id, 1, '$x new') ON CONFLICT (id) DO UPDATE SET v = t.v + 1, w = '$x ' || t.v;
};
}

sub converge
{
	my ($what, $columns) = @_;
	set_interval(0);
	for (1 .. 2)
	{
		sq($n{$_}, 'SELECT replstamp.sync_all()') for @names;
	}
	for my $x (@names)
	{
		is(sq($n{$x}, 'SELECT count(*) FROM replstamp.peers WHERE last_error IS NOT NULL'), '0',
			"$what: $x syncs without errors");
	}
	my $sql = "SELECT md5(string_agg(r::text, ',' ORDER BY id)), count(*) FROM (SELECT $columns FROM t) r";
	my $ca = sq($n{a}, $sql);
	is(sq($n{$_}, $sql), $ca, "$what: $_ holds the same rows as a ($columns)") for qw(b c);
	return;
}

# 1. ADD COLUMN, one node after the other, under writes.
set_interval(1);
my @plain = map { bench($_, 7, $plain) } @names;
sq($n{a}, "ALTER TABLE t ADD COLUMN w text DEFAULT 'none'");
my @w = (bench('a', 6, with_w('a')));
sleep 2;
sq($n{b}, "ALTER TABLE t ADD COLUMN w text DEFAULT 'none'");
push @w, bench('b', 4, with_w('b'));
sleep 2;
sq($n{c}, "ALTER TABLE t ADD COLUMN w text DEFAULT 'none'");
push @w, bench('c', 2, with_w('c'));
bench_done($_, 'of v') for @plain;
bench_done($_, 'of v and w') for @w;
for my $x (@names)
{
	ok(sq($n{$x}, 'SELECT count(*) FROM replstamp.peers WHERE changes_pulled > 0') eq '2',
		"$x kept pulling from both peers while the column was added");
}
converge('after a rolling ADD COLUMN', 'id, v, w');
my $written = sq($n{a}, "SELECT count(*) FROM t WHERE w ~ '^[abc] '");
ok($written > 50, "$written rows hold a value of w written on some node");
is(sq($n{c}, "SELECT count(DISTINCT left(w, 1)) FROM t WHERE w ~ '^[abc] '"), '3',
	'c holds values of w written on each of the three nodes');

# 2. The same, step by step, for the case where values got lost before: b
# lacks the new column x and updates a row after a wrote x there, but
# before b receives a's version, which then loses on b.  x's value is the
# one of the latest version that carries it, on every node.
sq($n{a}, 'INSERT INTO t VALUES (1001, 0, NULL)');
converge('before a second column', 'id, v, w');
sq($n{a}, "ALTER TABLE t ADD COLUMN x text DEFAULT 'none'");
sq($n{a}, "UPDATE t SET x = 'from a' WHERE id = 1001");
sq($n{b}, 'UPDATE t SET v = 100 WHERE id = 1001');
sq($n{b}, "SELECT replstamp.sync('a')");
sq($n{c}, "SELECT replstamp.sync('a')");
sq($n{c}, "SELECT replstamp.sync('b')");
sq($n{b}, "ALTER TABLE t ADD COLUMN x text DEFAULT 'none'");
sq($n{c}, "ALTER TABLE t ADD COLUMN x text DEFAULT 'none'");
converge('after a second column', 'id, v, w, x');
is(sq($n{$_}, 'SELECT v || x FROM t WHERE id = 1001'), '100from a',
	"$_: b's later update of v, and a's value of x") for @names;

# 3. DROP COLUMN, one node after the other, under writes.  Nodes that still
# have w write it until just before they drop it.
set_interval(1);
@plain = map { bench($_, 6, $plain) } @names;
my $wb = bench('b', 2, with_w('b'));
my $wc = bench('c', 4, with_w('c'));
sq($n{a}, 'ALTER TABLE t DROP COLUMN w');
bench_done($wb, 'of v and w');
sleep 1;
sq($n{b}, 'ALTER TABLE t DROP COLUMN w');
bench_done($wc, 'of v and w');
sleep 1;
sq($n{c}, 'ALTER TABLE t DROP COLUMN w');
bench_done($_, 'of v') for @plain;
converge('after a rolling DROP COLUMN', 'id, v, x');

# 4. A type change that cannot be converted stays an error, and the sync
# goes on once the types agree again.
sq($n{b}, 'ALTER TABLE t ADD COLUMN note text');
sq($n{a}, 'ALTER TABLE t ADD COLUMN note int');
sq($n{b}, "UPDATE t SET note = 'not a number' WHERE id = 1");
my ($rc, $out, $err) = $n{a}->psql('postgres', "SELECT replstamp.sync('b')");
like($err, qr/invalid input syntax for type integer: "not a number"/,
	'a value that does not convert to the column type here: a clear error');
like($err, qr/applying change [-0-9a-f]+\/\d+ \(UPDATE\) of table public\.t from peer "b"/,
	'naming the change and the table');
sq($n{a}, 'ALTER TABLE t ALTER COLUMN note TYPE text');
sq($n{a}, "SELECT replstamp.sync('b')");
is(sq($n{a}, 'SELECT note FROM t WHERE id = 1'), 'not a number', 'once the types agree, the change arrives');

$_->stop for values %n;
done_testing();
