# Pruning races syncs and local writers: pgbench writes on a while b
# pulls from a (and a from b) every second and both prune over and over,
# from the launcher every second and from replstamp.prune() in a loop.
# At the end both hold the same rows, no change is lost (every history row
# and every increment arrived), the log was pruned, every row's latest
# change is still in it, and a new node converges from what is kept.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use ReplstampTest;

my $schema = q{CREATE EXTENSION replstamp;
	CREATE TABLE accounts (id int PRIMARY KEY, balance int NOT NULL);
	CREATE TABLE history (id bigserial PRIMARY KEY, aid int);
	SELECT replstamp.track('accounts');
	SELECT replstamp.track('history');};
my ($a, $b) = map { replstamp_node($_, conf => ['max_connections = 30'], sql => $schema) } qw(a b);
sub sq { my ($n, $sql) = @_; return $n->safe_psql('postgres', $sql); }
sub checksum { my ($n, $sql) = @_;
	return sq($n, "SELECT md5(coalesce(string_agg(r::text, ',' ORDER BY r::text), '')) FROM ($sql) r"); }
sub latest_missing { my ($n) = @_;
	return sq($n, q{SELECT count(*) FROM replstamp.row_version rv WHERE NOT EXISTS (
		SELECT 1 FROM replstamp.changes c WHERE c.replica_id = rv.replica_id AND c.serial = rv.serial)}); }
add_peer($a, 'b', $b);
add_peer($b, 'a', $a);
sq($a, 'INSERT INTO accounts SELECT g, 0 FROM generate_series(1, 500) g');
sq($b, "SELECT replstamp.sync('a')");

for my $n ($a, $b)
{
	sq($n, 'ALTER SYSTEM SET replstamp.sync_interval = 1');
	sq($n, 'ALTER SYSTEM SET replstamp.prune_interval = 1');
	sq($n, 'SELECT pg_reload_conf()');
}

my $script = "$PostgreSQL::Test::Utils::tmp_check/races.sql";
open(my $fh, '>', $script) or die;
print $fh <<'EOF';
\set aid random(1, 500)
\set nid random(1001, 1100)
UPDATE accounts SET balance = balance + 1 WHERE id = :aid;
INSERT INTO history (aid) VALUES (:aid);
INSERT INTO accounts VALUES (:nid, 0) ON CONFLICT (id) DO UPDATE SET balance = accounts.balance + 1;
DELETE FROM accounts WHERE id = :nid + 1;
EOF
close $fh;
my $log = "$PostgreSQL::Test::Utils::tmp_check/races.log";
my $bench = IPC::Run::start(
	[ 'pgbench', '-n', '-c', '2', '-T', '10', '-f', $script,
	  '-h', $a->host, '-p', $a->port, 'postgres' ], '>', $log, '2>&1');

# Prune on both, over and over, while pgbench runs.
my ($prunes, $removed) = (0, 0);
for (;;)
{
	for my $n ($a, $b)
	{
		my ($rc, $out, $err) = $n->psql('postgres', 'SELECT replstamp.prune()');
		# The launcher's prune may be running: a second one waits for it.
		die "prune failed: $err" if $rc != 0;
		$removed += $out;
		$prunes++;
	}
	last unless eval { $bench->pump_nb; 1 } && $bench->pumpable;
}
$bench->finish;
my ($tx) = slurp_file($log) =~ /number of transactions actually processed: (\d+)/;
ok(defined $tx && $tx > 100, 'pgbench committed ' . ($tx // 0) . ' transactions');
ok($prunes >= 2 && $removed > 0, "$prunes prunes while it ran removed $removed changes");
ok(sq($b, 'SELECT changes_pulled FROM replstamp.peers') > 0, 'b pulled while a wrote');

# Stop the workers; a last round of syncs and prunes.
for my $n ($a, $b)
{
	sq($n, 'ALTER SYSTEM SET replstamp.sync_interval = 0');
	sq($n, 'SELECT pg_reload_conf()');
}
$_->poll_query_until('postgres',
	"SELECT count(*) = 0 FROM pg_stat_activity WHERE backend_type = 'replstamp sync'")
  for ($a, $b);
for (1 .. 2)
{
	sq($_, 'SELECT replstamp.sync_all()') for ($b, $a);
	sq($_, 'SELECT replstamp.prune()') for ($a, $b);
}

for my $what ('SELECT id, balance FROM accounts', 'SELECT * FROM history')
{
	is(checksum($b, $what), checksum($a, $what), "a and b: same result of $what");
}
is(sq($b, 'SELECT count(*) FROM history'), $tx, 'b holds a history row for every transaction');
is(sq($b, 'SELECT sum(balance) FROM accounts WHERE id <= 500'), $tx, 'and every increment');
my $stamped = sq($a, 'SELECT replstamp.next_serial() - 1');
my $held = sq($a, 'SELECT count(*) FROM replstamp.changes');
ok($held < $stamped / 2, "a's log holds $held of the $stamped changes it stamped");
is(latest_missing($_), '0', $_->name . ': the latest change of every row is in the log') for ($a, $b);

# A new node converges from what a kept.
my $c = replstamp_node('c', sql => $schema);
add_peer($c, 'a', $a);
sq($c, "SELECT replstamp.sync('a')");
for my $what ('SELECT id, balance FROM accounts', 'SELECT * FROM history')
{
	is(checksum($c, $what), checksum($a, $what), "a new node c: same result of $what");
}

$_->stop for ($a, $b, $c);
done_testing();
