# Three nodes write the same tables at the same time (pgbench, with
# conflicting updates, inserts and deletes of the same keys) while their
# sync workers pull from each other every second; once the writing stops
# and a last round of syncs has run, every node holds the same rows and the
# same change log.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use ReplstampTest;

my @names = qw(a b c);
my %n;
for my $i (0 .. $#names)
{
	$n{ $names[$i] } = replstamp_node($names[$i], conf => ['max_connections = 30'], sql => qq{
		CREATE EXTENSION replstamp;
		CREATE TABLE accounts (id int PRIMARY KEY, balance int NOT NULL, node text);
		CREATE TABLE history (id bigint PRIMARY KEY, node text, aid int, delta int);
		CREATE SEQUENCE hseq START @{[ ($i + 1) * 1000000000 ]};
		SELECT replstamp.track('accounts');
		SELECT replstamp.track('history');
	});
}
sub sq { my ($node, $sql) = @_; return $node->safe_psql('postgres', $sql); }
for my $x (@names)
{
	for my $y (@names)
	{
		next if $x eq $y;
		add_peer($n{$x}, $y, $n{$y});
	}
}
sq($n{a}, 'INSERT INTO accounts SELECT g, 0, $$a$$ FROM generate_series(1, 1000) g');
sq($n{b}, "SELECT replstamp.sync('a')");
sq($n{c}, "SELECT replstamp.sync('b')");
is(sq($n{c}, 'SELECT count(*) FROM accounts'), '1000', 'the accounts reach c through b');

# Every node syncs with both others every second while pgbench writes.
for my $x (@names)
{
	sq($n{$x}, 'ALTER SYSTEM SET replstamp.sync_interval = 1');
	sq($n{$x}, 'SELECT pg_reload_conf()');
}

my @bench;
for my $x (@names)
{
	my $script = "$PostgreSQL::Test::Utils::tmp_check/converge_$x.sql";
	open(my $fh, '>', $script) or die;
	print $fh <<"EOF";
\\set aid random(1, 1000)
\\set delta random(-100, 100)
\\set nid random(1001, 1100)
UPDATE accounts SET balance = balance + :delta, node = '$x' WHERE id = :aid;
INSERT INTO history VALUES (nextval('hseq'), '$x', :aid, :delta);
INSERT INTO accounts VALUES (:nid, :delta, '$x') ON CONFLICT (id) DO UPDATE SET balance = EXCLUDED.balance, node = '$x';
DELETE FROM accounts WHERE id = :nid + 1 AND :delta < 0;
EOF
	close $fh;
	my $log = "$PostgreSQL::Test::Utils::tmp_check/converge_$x.log";
	push @bench, IPC::Run::start(
		[ 'pgbench', '-n', '-c', '2', '-T', '8', '-f', $script,
		  '-h', $n{$x}->host, '-p', $n{$x}->port, 'postgres' ],
		'>', $log, '2>&1');
}
$_->finish for @bench;
for my $x (@names)
{
	my $log = slurp_file("$PostgreSQL::Test::Utils::tmp_check/converge_$x.log");
	my ($tx) = $log =~ /number of transactions actually processed: (\d+)/;
	ok(defined $tx && $tx > 100, "pgbench on $x committed " . ($tx // 0) . ' transactions');
	ok(sq($n{$x}, 'SELECT count(*) FROM replstamp.peers WHERE changes_pulled > 0') eq '2',
		"$x pulled from both peers while they wrote");
}

# Stop the workers, then a last round of syncs in every direction.
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
for (1 .. 2)
{
	for my $x (@names)
	{
		sq($n{$x}, 'SELECT replstamp.sync_all()');
		is(sq($n{$x}, 'SELECT count(*) FROM replstamp.peers WHERE last_error IS NOT NULL'), '0',
			"$x: the last syncs went through");
	}
}

sub checksum
{
	my ($node, $sql) = @_;
	return sq($node, "SELECT md5(coalesce(string_agg(r::text, ',' ORDER BY r::text), '')) FROM ($sql) r");
}
for my $what ('SELECT id, balance, node FROM accounts',
	'SELECT * FROM history',
	'SELECT replica_id, serial FROM replstamp.changes')
{
	my $ca = checksum($n{a}, $what);
	is(checksum($n{b}, $what), $ca, "a and b: same result of $what");
	is(checksum($n{c}, $what), $ca, "a and c: same result of $what");
}
my $total = sq($n{a}, 'SELECT count(*) FROM replstamp.changes');
ok($total > 1000, "every node holds all $total changes");
is(sq($n{a}, 'SELECT count(DISTINCT replica_id) FROM replstamp.changes'), '3',
	'stamped by three replica IDs');

$_->stop for values %n;
done_testing();
