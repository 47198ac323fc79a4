# A failover strands nothing (issue 9, item 1).  Node a has streaming
# standbys; b pulls a's rows 1-10; a writes rows 11-20, which the standbys
# replay and b has not pulled; a dies; a standby is promoted and rotates
# (the timeline changed).  It holds 11-20 under a's old ID above what its
# vector claims of it: it re-issues them under its new ID, and b, syncing
# from it with the sync workers running, ends with all 20 rows and the same
# change-log stamps.  Negative control: with replstamp.reissue_on_rotation
# = off the promoted standby keeps them to itself and b never gets 11-20.
# Also: b keeps the dead primary as a peer and adds the promoted standby as
# another one, which this time claims a's old ID up to 20 (a recorded its
# lowest uncommitted serial after writing them): b gets them too.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use ReplstampTest;
require_programs('pg_basebackup');

sub sq { my ($n, $sql) = @_; return $n->safe_psql('postgres', $sql); }

my $schema = q{CREATE EXTENSION replstamp;
	CREATE TABLE t (id int PRIMARY KEY, note text);
	SELECT replstamp.track('t');};
# No sync worker on the primaries: they record their lowest uncommitted
# serial only when they serve or sync, where the test says.
my @conf = ('replstamp.prune_interval = 0');

sub standby_of
{
	my ($primary, $name, @extra) = @_;
	$primary->backup("for_$name");
	my $s = PostgreSQL::Test::Cluster->new($name);
	$s->init_from_backup($primary, "for_$name", has_streaming => 1);
	$s->append_conf('postgresql.conf', join("\n", @extra) . "\n") if @extra;
	$s->start;
	return $s;
}

# After the failover: the node that pulled from the dead primary pulls from
# the promoted standby, both with sync workers.
sub fail_over
{
	my ($s, $b, $how) = @_;
	start_verified($s, sub { $s->promote });
	# The promoted node pulls from b in a's place (the standbys of one
	# primary fail over to different b's in this test).
	sq($s, "UPDATE replstamp.peer SET conninfo = \$\$" . $b->connstr('postgres') . "\$\$ WHERE name = 'b'");
	if ($how eq 'repoint')
	{
		# What a virtual IP or a DNS name does: the peer 'a' is the new primary.
		sq($b, "UPDATE replstamp.peer SET conninfo = \$\$" . $s->connstr('postgres') . "\$\$ WHERE name = 'a'");
	}
	else
	{
		add_peer($b, 's', $s);
	}
	set_guc($_, 'replstamp.sync_interval', 1) for ($s, $b);
	return;
}

# 1. The issue's scenario, and its negative control on a second standby of
# the same primary, each with a node b of its own.
my $a = replstamp_node('a', template => 1, init => { allows_streaming => 1 }, conf => \@conf, sql => $schema);
my $b = replstamp_node('b', template => 1, conf => \@conf, sql => $schema);
my $b_off = replstamp_node('b_off', template => 1, conf => \@conf, sql => $schema);
add_peer($a, 'b', $b);
add_peer($b, 'a', $a);
add_peer($b_off, 'a', $a);
my $s = standby_of($a, 's');
my $s_off = standby_of($a, 's_off', 'replstamp.reissue_on_rotation = off');
my $id_a = sq($a, 'SELECT replica_id FROM replstamp.node');

sq($a, "INSERT INTO t SELECT g, 'pulled before the failover' FROM generate_series(1, 10) g");
is(sq($_, "SELECT replstamp.sync('a')"), '10', $_->name . ' pulls rows 1-10') for ($b, $b_off);
sq($a, "INSERT INTO t SELECT g, 'only on the standby' FROM generate_series(11, 20) g");
$a->wait_for_catchup($_) for ($s, $s_off);
is(sq($s, 'SELECT count(*) FROM t'), '20', 'the standby replayed rows 11-20');
$a->stop('immediate');

fail_over($s, $b, 'repoint');
my $id_s = sq($s, 'SELECT replica_id FROM replstamp.node');
isnt($id_s, $id_a, 'the promoted standby rotated');
ok($s->log_contains(qr/10 changes the old ID made from serial 11 on were re-issued under the new one/),
	'it re-issued the ten changes its vector no longer claims under the old ID');
wait_converged([ $s, $b ], ['t'], 'failover');
is(sq($b, 'SELECT count(*) FROM t'), '20', 'b holds all 20 rows');
is(sq($b, "SELECT count(*) FROM t WHERE id BETWEEN 11 AND 20 AND note = 'only on the standby'"), '10',
	'rows 11-20 came from the promoted standby');
is(sq($b, "SELECT count(*) FROM replstamp.changes WHERE replica_id = '$id_s' AND (pk->>'id')::int BETWEEN 11 AND 20"),
	'10', 'under its new ID');

# Negative control.
fail_over($s_off, $b_off, 'repoint');
my $since = sq($b_off, 'SELECT now()');
$b_off->poll_query_until('postgres',
	"SELECT last_sync_at > '$since' AND last_error IS NULL FROM replstamp.peer WHERE name = 'a'")
  or die 'b_off never synced from the promoted standby';
sq($b_off, "SELECT replstamp.sync('a')");
is(sq($b_off, 'SELECT count(*) FROM t'), '10',
	'without the re-issue: b misses rows 11-20 however often it syncs');
is(sq($s_off, "SELECT count(*) FROM replstamp.changes WHERE replica_id = '$id_a' AND serial > "
		  . "(SELECT serial FROM replstamp.vector WHERE replica_id = '$id_a')"),
	'10', 'without the re-issue: they sit in the promoted node\'s log above its vector: stranded');
$_->stop for ($s, $b, $s_off, $b_off);

# 2. The dead primary stays a peer of b, the promoted standby is added as
# another; a recorded its lowest uncommitted serial after rows 11-20, so
# the promoted node claims the old ID up to 20 and re-issues nothing.
my $a2 = replstamp_node('a2', template => 1, init => { allows_streaming => 1 }, conf => \@conf, sql => $schema);
my $b2 = replstamp_node('b2', template => 1, conf => \@conf, sql => $schema);
add_peer($a2, 'b', $b2);
add_peer($b2, 'a', $a2);
my $s2 = standby_of($a2, 's2');
my $id_a2 = sq($a2, 'SELECT replica_id FROM replstamp.node');
sq($a2, "INSERT INTO t SELECT g, 'pulled before the failover' FROM generate_series(1, 10) g");
sq($b2, "SELECT replstamp.sync('a')");
sq($a2, "INSERT INTO t SELECT g, 'only on the standby' FROM generate_series(11, 20) g");
sq($a2, "SELECT replstamp.sync('b')");
$a2->wait_for_catchup($s2);
$a2->stop('immediate');
fail_over($s2, $b2, 'add');
is(sq($s2, "SELECT serial FROM replstamp.vector WHERE replica_id = '$id_a2'"), '20',
	'the promoted standby claims the old ID up to 20');
wait_converged([ $s2, $b2 ], ['t'], 'failover, the dead primary still a peer');
is(sq($b2, 'SELECT count(*) FROM t'), '20', 'b holds all 20 rows although the dead primary said it had handed out 10');
$_->stop for ($s2, $b2);

done_testing();
