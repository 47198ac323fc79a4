# Changes made inside a backup window are never stranded (issue 9, item 1,
# "the same shape").
#
# 1. The live node crashes between prepare_backup() and finish_backup(),
#    after changes made in the window, some pulled by its peer, some not.
#    It restarts marked 'backup', so it rotates (where in doubt, rotate);
#    its vector claims the old ID only below the lowest uncommitted serial
#    recorded at prepare_backup(), and it re-issues what it holds above
#    under its new ID, so that with the sync workers running its peer gets
#    every change and the nodes end with the same change-log stamps.
#    Negative control: with replstamp.reissue_on_rotation = off the
#    changes the peer had not pulled stay stranded on the node.
# 2. A copy restored from CALL replstamp.backup() taken while a writer
#    commits all along holds commits made during the backup, above the
#    recorded lowest uncommitted serial: it re-issues them, and the
#    copy's, the live node's and the third node's changes reach all three.
#    Negative control: a second copy of the same backup with the re-issue
#    off holds them above its vector, where nobody is ever served them.
use strict;
use warnings;
use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use ReplstampTest;

sub sq { my ($n, $sql) = @_; return $n->safe_psql('postgres', $sql); }

my $schema = q{CREATE EXTENSION replstamp;
	CREATE TABLE t (id int PRIMARY KEY, note text);
	SELECT replstamp.track('t');};

sub workers_off
{
	my ($n) = @_;
	set_guc($n, 'replstamp.sync_interval', 0);
	$n->poll_query_until('postgres',
		"SELECT count(*) = 0 FROM pg_stat_activity WHERE backend_type = 'replstamp sync'")
	  or die 'the sync worker does not stop';
	return;
}

# 1. A crash inside the window.
my %u;
for my $reissue ('on', 'off')
{
	my $a = replstamp_node("a_$reissue", template => 1, init => { allows_streaming => 1 },
		conf => [ 'replstamp.prune_interval = 0', "replstamp.reissue_on_rotation = $reissue" ],
		sql => $schema);
	my $b = replstamp_node("b_$reissue", template => 1, conf => ['replstamp.prune_interval = 0'], sql => $schema);
	add_peer($a, 'b', $b);
	add_peer($b, 'a', $a);
	set_guc($_, 'replstamp.sync_interval', 1) for ($a, $b);
	my $id = sq($a, 'SELECT replica_id FROM replstamp.node');

	sq($a, "INSERT INTO t SELECT g, 'before the window' FROM generate_series(1, 10) g");
	sq($a, "SELECT replstamp.prepare_backup('never finished')");
	my $lus = sq($a, 'SELECT backup_lus FROM replstamp.node');
	sq($a, "INSERT INTO t SELECT g, 'in the window, pulled' FROM generate_series(11, 15) g");
	$b->poll_query_until('postgres', 'SELECT count(*) = 15 FROM t') or die 'b does not pull';
	workers_off($b);
	sq($a, "INSERT INTO t SELECT g, 'in the window, not pulled' FROM generate_series(16, 20) g");
	$a->stop('immediate');
	start_verified($a, sub { $a->start });
	my $new = sq($a, 'SELECT replica_id FROM replstamp.node');
	isnt($new, $id, "a crash inside the backup window rotates the live node (reissue_on_rotation = $reissue)");
	is(sq($a, "SELECT lus_at_retirement FROM replstamp.replica_history WHERE replica_id = '$id'"), $lus,
		"it retired its old ID as held only below the serial recorded at prepare_backup() ($reissue)");
	set_guc($b, 'replstamp.sync_interval', 1);
	$u{$reissue} = [ $a, $b, $id, $new, $lus ];
}

my ($a, $b, $id, $new, $lus) = @{ $u{on} };
ok($a->log_contains(qr/10 changes the old ID made from serial $lus on were re-issued under the new one/),
	'the changes made in the window were re-issued under the new ID');
wait_converged([ $a, $b ], ['t'], 'crash inside the backup window');
is(sq($b, 'SELECT count(*) FROM t'), '20', 'b holds every row, those it had not pulled before the crash too');
is(sq($b, "SELECT count(*) FROM replstamp.changes WHERE replica_id = '$new' AND (pk->>'id')::int BETWEEN 16 AND 20"),
	'5', 'those came under the new ID');

{
	my ($a_off, $b_off, $id_off) = @{ $u{off} };
	my $since = sq($b_off, 'SELECT now()');
	$b_off->poll_query_until('postgres',
		"SELECT last_sync_at > '$since' AND last_error IS NULL FROM replstamp.peer WHERE name = 'a'")
	  or die 'b_off never synced';
	sq($b_off, "SELECT replstamp.sync('a')");
	is(sq($b_off, 'SELECT count(*) FROM t'), '15',
		'without the re-issue: the peer never gets the changes it had not pulled before the crash');
	is(sq($a_off, "SELECT string_agg((pk->>'id'), ',' ORDER BY serial) FROM replstamp.changes "
			  . "WHERE replica_id = '$id_off' AND serial > (SELECT serial FROM replstamp.vector WHERE replica_id = '$id_off')"),
		'16,17,18,19,20', 'without the re-issue: those sit above the vector, stranded (b gave back the others)');
	$_->stop for ($a_off, $b_off);
}

# 2. Commits during CALL replstamp.backup(), on the live node of part 1.
# A writer commits 100 rows a second (pgbench's rate limit) before,
# during and after the backup.
sq($a, 'CREATE SEQUENCE wseq START 100001');
my $script = "$PostgreSQL::Test::Utils::tmp_check/writer.sql";
open(my $fh, '>', $script) or die;
print $fh "INSERT INTO t VALUES (nextval('wseq'), 'committed by the writer');\n";
close $fh;
my $writer = IPC::Run::start(
	[ 'pgbench', '-n', '-c', '1', '-t', '500', '-R', '100', '-f', $script,
	  '-h', $a->host, '-p', $a->port, 'postgres' ],
	'>', \my $wout, '2>&1');
$a->poll_query_until('postgres', 'SELECT count(*) >= 20 FROM t WHERE id > 100000')
  or die 'the writer does not write';
sq($a, "CALL replstamp.backup('" . $a->backup_dir . "/during', label => 'while writing')");
$writer->finish or die "the writer failed: $wout";
my $written = sq($a, 'SELECT count(*) FROM t WHERE id > 100000');
note("the writer committed $written rows");

my @copies;
for my $reissue ('on', 'off')
{
	my $c = PostgreSQL::Test::Cluster->new("copy_$reissue");
	$c->init_from_backup($a, 'during');
	$c->append_conf('postgresql.conf', "replstamp.reissue_on_rotation = $reissue\n");
	# Not pulling from the live node's peers until the test says so (over
	# the live node's ALTER SYSTEM).
	$c->append_conf('postgresql.auto.conf', "replstamp.sync_interval = 0\n");
	start_verified($c, sub { $c->start });
	isnt(sq($c, 'SELECT replica_id FROM replstamp.node'), $new, "the restored copy rotated ($reissue)");
	push @copies, $c;
}
my ($c, $c_off) = @copies;
my $c_old = $new;
my ($reissued) = slurp_file($c->logfile) =~ /(\d+) changes the old ID made from serial \d+ on were re-issued/;
ok(defined $reissued && $reissued > 0,
	'the copy holds commits made during the backup, above the recorded serial, and re-issued them ('
	  . ($reissued // 0) . ')');
is(sq($c_off, "SELECT count(*) FROM replstamp.changes WHERE replica_id = '$c_old' AND serial > "
		  . "(SELECT serial FROM replstamp.vector WHERE replica_id = '$c_old')"),
	$reissued // -1, 'without the re-issue the other copy holds the same changes above its vector, stranded');
$c_off->stop;

# The copy joins the live node and b; each of the three writes on.
add_peer($c, 'a', $a);
add_peer($a, 'c', $c);
add_peer($b, 'c', $c);
set_guc($c, 'replstamp.sync_interval', 1);
sq($c, "INSERT INTO t SELECT g, 'on the copy' FROM generate_series(201, 205) g");
sq($a, "INSERT INTO t SELECT g, 'on the live node after the backup' FROM generate_series(301, 305) g");
sq($b, "INSERT INTO t SELECT g, 'on b' FROM generate_series(401, 405) g");
my $state = wait_converged([ $a, $b, $c ], ['t'], 'restored copy, live node and b');
is(sq($c, 'SELECT count(*) FROM t'), 20 + $written + 15, 'every row on every node');
is(sq($_, "SELECT count(*) FROM t WHERE id BETWEEN 201 AND 205 OR id BETWEEN 301 AND 305 OR id BETWEEN 401 AND 405"),
	'15', $_->name . " has the copy's, the live node's and b's new rows")
  for ($a, $b, $c);
$_->stop for ($a, $b, $c);

done_testing();
