# A node upgraded with pg_upgrade from PostgreSQL 15 to 17 keeps its
# replica ID, its change log, its vector and its peers, and goes on
# replicating both ways under the same ID.  pg_upgrade keeps the timeline
# and the database OIDs but gives the new cluster a system identifier of
# its own, which replstamp otherwise takes for a copy into another
# cluster: the first start after pg_upgrade knows it by the mark that
# pg_upgrade's binary-upgrade mode left (src/identity.c).  A mark that
# names another cluster does not count: that upgrade rotates.
#
# pg_upgrade insists on a server of its own minor release, and npm's
# trees have neither; Debian's postgresql-17 (trixie) has both, but needs
# a newer C library than Debian 12's: test/pg_major.sh runs its programs
# through their own suite's dynamic loader, and test/run names that server,
# with replstamp copied in, in REPLSTAMP_DEBIAN_PG17.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use ReplstampTest;

my $new_install = $ENV{REPLSTAMP_DEBIAN_PG17};
plan skip_all => 'no PostgreSQL 17 with pg_upgrade here (test/run names one in REPLSTAMP_DEBIAN_PG17)'
  unless $new_install && -x "$new_install/bin/pg_upgrade";
plan skip_all => 'the node to upgrade must be PostgreSQL 15; this is ' . pg_major()
  unless pg_major() == 15;
my $old_install = $ENV{REPLSTAMP_INSTALL};
plan skip_all => 'REPLSTAMP_INSTALL must name the installation of PostgreSQL 15 with replstamp'
  unless $old_install;

sub sq { my ($n, $sql) = @_; return $n->safe_psql('postgres', $sql); }

my $a = replstamp_node('a', sql => $TRACK_T);
my $b = replstamp_node('b', sql => $TRACK_T);
add_peer($a, 'b', $b);
add_peer($b, 'a', $a);
sq($a, q{INSERT INTO t SELECT g, 'a' FROM generate_series(1, 100) g});
sq($b, q{INSERT INTO t SELECT g, 'b' FROM generate_series(101, 150) g});
sq($a, q{UPDATE t SET v = 'a again' WHERE id <= 10});
sq($_, 'SELECT replstamp.sync_all()') for ($a, $b);
my $before = wait_converged([ $a, $b ], ['t'], 'before the upgrade');

my $id = sq($a, 'SELECT replica_id FROM replstamp.node');
my $next = sq($a, 'SELECT replstamp.next_serial()');
my $vector = sq($a, q{SELECT string_agg(replica_id || ':' || serial, ',' ORDER BY replica_id) FROM replstamp.vector});
my $peers = sq($a, q{SELECT string_agg(name, ',' ORDER BY name) FROM replstamp.peer});
my $history = sq($a, 'SELECT count(*) FROM replstamp.replica_history');
$a->stop;

# pg_upgrade from a into a new cluster of Debian's 17, replstamp preloaded
# as on the old one; what it printed, and whether it succeeded.
sub upgrade_to
{
	my ($new) = @_;
	$new->init;
	$new->append_conf('postgresql.conf', "shared_preload_libraries = 'replstamp'\nreplstamp.sync_interval = 0\n");
	my $work = PostgreSQL::Test::Utils::tempdir;
	my ($stdout, $stderr);
	my $ok = IPC::Run::run(
		[ "$new_install/bin/pg_upgrade", '--no-sync',
			'-b', "$old_install/bin", '-B', "$new_install/bin",
			'-d', $a->data_dir, '-D', $new->data_dir,
			'-p', $a->port, '-P', $new->port, '-s', $work ],
		'>', \$stdout, '2>', \$stderr,
		init => sub { chdir $work or die "chdir $work: $!" });
	return ($ok, "$stdout\n$stderr");
}

# Negative control: the mark rewritten to name another cluster.
my $other = PostgreSQL::Test::Cluster->new('other17', install_path => $new_install);
my ($ok, $out) = upgrade_to($other);
ok($ok, 'pg_upgrade from 15 to 17 completes (for the control)') or diag($out);
my $mark = $other->data_dir . '/replstamp_pg_upgrade';
ok(-f $mark, 'pg_upgrade leaves replstamp\'s mark in the new data directory');
open(my $fh, '>', $mark) or die "$mark: $!";
print $fh "system identifier 12345\n";
close $fh;
start_verified($other, sub { $other->start });
isnt(sq($other, 'SELECT replica_id FROM replstamp.node'), $id,
	'with a mark that names another cluster, the upgraded node takes a new replica ID');
like(sq($other, 'SELECT retired_reason FROM replstamp.replica_history WHERE retired_at IS NOT NULL'),
	qr/system identifier changed/, 'because its system identifier changed');
$other->stop;

# The real one: same port and socket directory, so that b's peer entry
# still reaches it.
my $new = PostgreSQL::Test::Cluster->new('a17', port => $a->port, install_path => $new_install);
($ok, $out) = upgrade_to($new);
ok($ok, 'pg_upgrade from 15 to 17 completes') or diag($out);
BAIL_OUT('pg_upgrade failed') unless $ok;

start_verified($new, sub { $new->start });
like(sq($new, 'SELECT version()'), qr/^PostgreSQL 17\./, 'the node runs PostgreSQL 17');
is(sq($new, 'SELECT replica_id FROM replstamp.node'), $id, 'it keeps its replica ID');
is(sq($new, 'SELECT count(*) FROM replstamp.replica_history'), $history, 'nothing was rotated');
is(sq($new, q{SELECT string_agg(replica_id || ':' || serial, ',' ORDER BY replica_id) FROM replstamp.vector}),
	$vector, 'it keeps its vector');
is(sq($new, q{SELECT string_agg(name, ',' ORDER BY name) FROM replstamp.peer}), $peers, 'it keeps its peers');
is(node_state($new, 't'), $before, 'it keeps its rows and its change log, stamp by stamp');
cmp_ok(sq($new, 'SELECT replstamp.next_serial()'), '>=', $next, 'its serials go on from where they were');
unlike(slurp_file($new->logfile), qr/retired replica ID|PANIC|TRAP:/, 'its log shows no rotation and no crash');
like(slurp_file($new->logfile), qr/was upgraded by pg_upgrade and keeps replica ID $id/, 'it says it keeps its replica ID through pg_upgrade');

# Replication goes on both ways, under the same ID.
sq($new, q{INSERT INTO t VALUES (1000, 'after the upgrade'); UPDATE t SET v = 'on 17' WHERE id = 101});
sq($b, q{INSERT INTO t VALUES (2000, 'b after the upgrade')});
is(sq($b, q{SELECT replstamp.sync('a')}), '2', 'b pulls the upgraded node\'s two changes');
is(sq($new, q{SELECT replstamp.sync('b')}), '1', 'the upgraded node pulls b\'s change');
wait_converged([ $new, $b ], ['t'], 'after the upgrade');
is(sq($b, qq{SELECT count(*) FROM replstamp.changes WHERE replica_id = '$id' AND serial >= $next}), '2',
	'b holds the new changes under the same replica ID, after the old ones');
is(sq($b, 'SELECT count(DISTINCT replica_id) FROM replstamp.vector'), '2', 'b knows no third replica ID');

# The mark pg_upgrade left was for the first start only.
ok(!-e $new->data_dir . '/replstamp_pg_upgrade', "pg_upgrade's mark is gone after the first start");
start_verified($new, sub { $new->restart });
is(sq($new, 'SELECT replica_id FROM replstamp.node'), $id, 'a restart keeps the replica ID');
is(sq($new, 'SELECT count(*) FROM replstamp.replica_history'), $history, 'and rotates nothing');

$new->stop;
$b->stop;
done_testing();
