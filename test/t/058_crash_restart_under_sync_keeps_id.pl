# A crash restart of a live node keeps its replica ID whatever its sync
# workers and its peers' were doing: three nodes write while they pull from
# each other every second, and one of them, a, is stopped with an
# immediate shutdown (a crash: no checkpoint, WAL replayed at the next
# start) and started again, five times.  WAL keeps every change it
# committed, so it holds whatever its peers pulled from it: it keeps its
# ID, its history lists that one ID, and once the writing stops every node
# holds the same rows (issue 19, item 3).
#
# Each start of a records an epoch of its ID (identity.c), which its peers
# record in turn once they hold a's changes from its first serial on.
# Pulls come in pages of ten changes, a pause after each, so that the
# catch-up after each restart spans many pages (as that of a busy node does
# with the default of a thousand), and a syncs from b half-way through it:
# a page that committed b's vector entry without the epochs of a's history
# up to there showed a two histories of its ID, and a rotated.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);
use ReplstampTest;

sub sq { my ($n, $sql) = @_; return $n->safe_psql('postgres', $sql); }

my @names = qw(a b c);
my %n;
for my $i (0 .. $#names)
{
	$n{ $names[$i] } = replstamp_node($names[$i], template => 1,
		conf => [ 'max_connections = 30', 'restart_after_crash = on',
		  'replstamp.sync_batch_size = 10', 'replstamp.sync_delay = 100ms' ], sql => qq{
		CREATE EXTENSION replstamp;
		CREATE TABLE accounts (id int PRIMARY KEY, balance int NOT NULL, node text);
		CREATE TABLE history (id bigint PRIMARY KEY, node text, aid int, delta int);
		CREATE SEQUENCE hseq START @{[ ($i + 1) * 1000000000 ]};
		SELECT replstamp.track('accounts');
		SELECT replstamp.track('history');
	});
}
add_mesh(@n{@names});
sq($n{a}, 'INSERT INTO accounts SELECT g, 0, $$a$$ FROM generate_series(1, 200) g');
sq($n{b}, "SELECT replstamp.sync('a')");
sq($n{c}, "SELECT replstamp.sync('a')");
set_guc($n{$_}, 'replstamp.sync_interval', 1) for @names;

# Writers on every node, until stopped: conflicting updates, inserts and
# deletes of the same keys.  The crashing node's writer dies with it and is
# started again.
my %bench;
sub start_writer
{
	my ($x) = @_;
	my $script = "$PostgreSQL::Test::Utils::tmp_check/crash_$x.sql";
	open(my $fh, '>', $script) or die;
	print $fh <<"EOF";
\\set aid random(1, 200)
\\set delta random(-100, 100)
\\set nid random(201, 260)
BEGIN;
UPDATE accounts SET balance = balance + :delta, node = '$x' WHERE id = :aid;
INSERT INTO history VALUES (nextval('hseq'), '$x', :aid, :delta);
COMMIT;
INSERT INTO accounts VALUES (:nid, :delta, '$x') ON CONFLICT (id) DO UPDATE SET balance = EXCLUDED.balance, node = '$x';
DELETE FROM accounts WHERE id = :nid + 1 AND :delta < 0;
EOF
	close $fh;
	my $log = "$PostgreSQL::Test::Utils::tmp_check/crash_$x.log";
	$bench{$x} = IPC::Run::start(
		[ 'pgbench', '-n', '-c', '2', '-R', '10', '-T', '600', '-f', $script,
		  '-h', $n{$x}->host, '-p', $n{$x}->port, 'postgres' ],
		'>>', $log, '2>&1');
	return;
}
start_writer($_) for @names;

# What a has handed out so far, and how far b and c have pulled it.
sub progress
{
	my $id = sq($n{a}, 'SELECT replica_id FROM replstamp.node');
	return (sq($n{a}, 'SELECT replstamp.next_serial()'),
		map { sq($n{$_}, "SELECT coalesce(max(serial), 0) FROM replstamp.vector WHERE replica_id = '$id'") } qw(b c));
}

my $a = $n{a};
my $id = sq($a, 'SELECT replica_id FROM replstamp.node');
for my $round (1 .. 5)
{
	# a writes on, b and c pull some of it, and a pulls from them.
	my ($next) = progress();
	$a->poll_query_until('postgres', "SELECT replstamp.next_serial() > $next + 50")
	  or die "round $round: a does not write";
	for my $x (qw(b c))
	{
		$n{$x}->poll_query_until('postgres',
			"SELECT coalesce(max(serial), 0) > $next FROM replstamp.vector WHERE replica_id = '$id'")
		  or die "round $round: $x does not pull from a";
	}
	my $pulled = sq($a, "SELECT sum(changes_pulled) FROM replstamp.peers");
	$a->poll_query_until('postgres', "SELECT sum(changes_pulled) > $pulled FROM replstamp.peers")
	  or die "round $round: a does not pull";

	# The crash, in the middle of it all.
	$a->stop('immediate');
	$bench{a}->finish;
	start_verified($a, sub { $a->start });
	start_writer('a');

	# A burst of changes right after the start, which b and c pull page by
	# page; while b is half-way through them, a syncs from b, whose
	# handshake shows how far b holds a's ID and the epochs of it: up to
	# there b holds the one a minted at this start.
	my $epoch = sq($a, "SELECT max(first_serial) FROM replstamp.epoch WHERE replica_id = '$id'");
	sq($a, q{INSERT INTO history SELECT nextval('hseq'), 'a', 1, 0 FROM generate_series(1, 500)});
	my $burst = sq($a, "SELECT max(serial) FROM replstamp.changes WHERE replica_id = '$id'");
	$n{b}->poll_query_until('postgres',
		"SELECT coalesce(max(serial), 0) >= $epoch FROM replstamp.vector WHERE replica_id = '$id'")
	  or die "round $round: b does not pull from a after the crash";
	my $held = sq($n{b}, "SELECT max(serial) FROM replstamp.vector WHERE replica_id = '$id'");
	$a->psql('postgres', "SELECT replstamp.sync('b')");
	note("round $round: a synced from b while b held a's ID up to $held, "
		  . "this start's epoch begins at $epoch, the burst ends at $burst");

	# Until a rotates, or every peer has talked with it twice since the
	# crash both ways and b and c hold its changes from after the crash.
	my $t0 = sq($a, 'SELECT now()');
	my ($after) = progress();
	my $deadline = time + $PostgreSQL::Test::Utils::timeout_default;
	for (;;)
	{
		last if sq($a, 'SELECT replica_id FROM replstamp.node') ne $id;
		my ($next, @pulled) = progress();
		last if $next > $after + 50 && !grep({ $_ < $after } @pulled)
		  && sq($a, "SELECT count(*) FROM replstamp.peers WHERE last_sync_at > '$t0'") eq '2'
		  && sq($a, "SELECT count(*) FROM replstamp.pullers WHERE last_pull_at > '$t0'") eq '2';
		die "round $round: no progress after the crash" if time > $deadline;
		usleep(100_000);
	}

	is(sq($a, 'SELECT replica_id FROM replstamp.node'), $id,
		"crash restart $round under sync: a keeps its replica ID");
	is(sq($a, 'SELECT count(*) FROM replstamp.replica_history'), '1',
		"crash restart $round under sync: a's history lists one ID");
	# (A failure above must not make the next rounds wait for the old ID.)
	$id = sq($a, 'SELECT replica_id FROM replstamp.node');
}
ok(!$a->log_contains(qr/retired replica ID/), 'a never rotated');
ok(!grep({ $n{$_}->log_contains(qr/parts from/) } @names), 'no node saw two histories of an ID');

# Stop the writers, then let the sync workers carry everything everywhere.
for my $x (@names)
{
	$bench{$x}->signal('INT');
	$bench{$x}->finish;
}
wait_converged([ map { $n{$_} } @names ], [ 'accounts', 'history' ], 'after five crashes of a');
is(sq($n{$_}, 'SELECT count(DISTINCT replica_id) FROM replstamp.changes'), '3',
	"$_: changes of three replica IDs, none re-issued") for @names;

$_->stop for values %n;
done_testing();
