# Rotation is atomic and crash-safe: a process killed with SIGKILL in the
# middle of a rotation (the startup worker, or a writer doing the check
# itself) leaves the old identity, and the next start rotates exactly once.
# And no window: a change made by the first statement after start-up, while
# the worker may still be checking, carries the new ID.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use ReplstampTest;
require_programs('pg_basebackup');

my $a = replstamp_node('primary', init => { allows_streaming => 1 });
$a->safe_psql('postgres', q{CREATE EXTENSION replstamp; CREATE TABLE t (id int PRIMARY KEY);
	SELECT replstamp.track('t'); INSERT INTO t SELECT generate_series(1, 10);});
my $id = $a->safe_psql('postgres', 'SELECT replica_id FROM replstamp.node');
$a->safe_psql('postgres', "SELECT replstamp.prepare_backup('before the crash')");
$a->backup('b');
$a->safe_psql('postgres', 'SELECT replstamp.finish_backup()');
my $lus = $a->safe_psql('postgres', 'SELECT backup_lus FROM replstamp.node');
$a->stop;

# The identity after a rotation: one retired old ID, one current new ID,
# the node row naming the current one, the old ID claimed below the LUS.
sub check_rotated_once
{
	my ($n, $what) = @_;
	my $now = $n->safe_psql('postgres', 'SELECT replica_id FROM replstamp.node');
	isnt($now, $id, "$what: the ID changed");
	is($n->safe_psql('postgres', 'SELECT count(*) FROM replstamp.replica_history'), '2',
		"$what: exactly one rotation in the history");
	is($n->safe_psql('postgres',
			"SELECT count(*) FROM replstamp.replica_history WHERE replica_id = '$id' AND retired_at IS NOT NULL"),
		'1', "$what: the old ID is retired");
	is($n->safe_psql('postgres',
			'SELECT replica_id FROM replstamp.replica_history WHERE retired_at IS NULL'),
		$now, "$what: the only current ID in the history is the node's");
	is($n->safe_psql('postgres', "SELECT serial FROM replstamp.vector_state WHERE replica_id = '$id'"),
		$lus - 1, "$what: the old ID is claimed below the recorded LUS");
	is($n->safe_psql('postgres', 'SELECT state FROM replstamp.node'), 'original', "$what: state original");
	return $now;
}

# 1. Race: the first statement after start-up, worker or not.
for my $i (1 .. 3)
{
	my $r = PostgreSQL::Test::Cluster->new("race$i");
	$r->init_from_backup($a, 'b');
	$r->start;
	$r->safe_psql('postgres', 'INSERT INTO t VALUES (100)');
	my $new = check_rotated_once($r, "race $i");
	is($r->safe_psql('postgres', "SELECT replica_id FROM replstamp.changes WHERE (pk->>'id')::int = 100"),
		$new, "race $i: the first change after start-up carries the new ID");
	$r->stop;
}

# 2. The startup worker is killed half-way through its rotation.
my $w = PostgreSQL::Test::Cluster->new('worker_killed');
$w->init_from_backup($a, 'b');
$w->append_conf('postgresql.conf', "replstamp.debug_rotation_pause = 600s\nrestart_after_crash = on");
$w->start;
$w->wait_for_log(qr/pausing the rotation/);
my $wpid = $w->safe_psql('postgres',
	"SELECT pid FROM pg_stat_activity WHERE backend_type = 'replstamp identity check'");
ok($wpid =~ /^\d+$/, 'the worker is half-way through the rotation');
is($w->safe_psql('postgres', 'SELECT replica_id FROM replstamp.node'), $id,
	'meanwhile others still see the old ID: nothing is committed');
my $offset = -s $w->logfile;
kill 'KILL', $wpid;
$w->wait_for_log(qr/all server processes terminated; reinitializing/, $offset);
# After the crash restart the check runs again and pauses again: stop it
# there too, then start without the pause.
$w->wait_for_log(qr/pausing the rotation/, $offset);
$w->stop('immediate');
$w->adjust_conf('postgresql.conf', 'replstamp.debug_rotation_pause', '0');
start_verified($w, sub { $w->start });
my $new_w = check_rotated_once($w, 'worker killed twice mid-rotation');
$w->safe_psql('postgres', 'INSERT INTO t VALUES (200)');
is($w->safe_psql('postgres', "SELECT replica_id FROM replstamp.changes WHERE (pk->>'id')::int = 200"),
	$new_w, 'after the crashes: new changes carry the new ID');
$w->stop;

# 3. A writer doing the check itself (no worker can start) is killed with
# its rotation uncommitted.
my $k = PostgreSQL::Test::Cluster->new('writer_killed');
$k->init_from_backup($a, 'b');
$k->append_conf('postgresql.conf', "max_worker_processes = 0\nrestart_after_crash = on");
$k->start;
my $s = $k->background_psql('postgres');
$s->query_safe('BEGIN');
$s->query_safe('INSERT INTO t VALUES (300)');
my $uncommitted = $s->query_safe('SELECT replica_id FROM replstamp.node');
isnt($uncommitted, $id, 'the writer rotated in its own transaction');
my $spid = $s->query_safe('SELECT pg_backend_pid()');
$offset = -s $k->logfile;
kill 'KILL', $spid;
$k->wait_for_log(qr/database system is ready to accept connections/, $offset);
eval { $s->quit; };
is($k->safe_psql('postgres', 'SELECT replica_id FROM replstamp.node'), $id,
	'the killed rotation left the old identity whole');
is($k->safe_psql('postgres', "SELECT count(*) FROM replstamp.replica_history WHERE replica_id = '$uncommitted'"),
	'0', 'and no trace of the ID it minted');
$k->safe_psql('postgres', 'INSERT INTO t VALUES (301)');
my $new_k = check_rotated_once($k, 'writer killed mid-rotation');
is($k->safe_psql('postgres', "SELECT replica_id FROM replstamp.changes WHERE (pk->>'id')::int = 301"),
	$new_k, 'the next write rotates once and carries the new ID');
$k->stop;

done_testing();
