# A handshake is read in one snapshot.  It shows, per replica ID, how far
# the node holds it and the epochs of the ID's history up to there, which
# a sync commits together.  Read in two snapshots, with a sync committing
# between the epochs and the vector, it showed the new vector entry with
# the old epochs: a history that parts from its origin's at the epoch it
# lacks.  A peer then refused to pull that ID ("parts from"), and the ID's
# own node, pulling, took itself for a node gone back in time and rotated
# (test 058 failed that way now and then under load).
#
# Here: a restarts after a crash (a new epoch of its ID), writes on, and c
# pulls that from a.  Then c pulls from b while b's handshake pauses
# between its two reads (replstamp.debug_handshake_pause, in c's
# connection to b only), and b pulls from a meanwhile: b's entry for a's
# ID passes the new epoch, with the epoch, in between.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use ReplstampTest;

sub sq { my ($n, $sql) = @_; return $n->safe_psql('postgres', $sql); }

my %n = map {
	$_ => replstamp_node($_, template => 1,
		conf => [ 'replstamp.sync_interval = 0', 'replstamp.prune_interval = 0' ], sql => q{
		CREATE EXTENSION replstamp;
		CREATE TABLE t (id int PRIMARY KEY, note text);
		SELECT replstamp.track('t');
	})
} qw(a b c);
my ($a, $b, $c) = @n{qw(a b c)};
add_peer($b, 'a', $a);
add_peer($c, 'a', $a);
# c pulls from b as a role of its own, whose sessions on b pause each
# handshake they make.
sq($b, q{CREATE ROLE slow_puller LOGIN SUPERUSER;
	ALTER ROLE slow_puller SET replstamp.debug_handshake_pause = 8000});
$c->safe_psql('postgres',
	"SELECT replstamp.add_peer('b', \$\$" . $b->connstr('postgres') . " user=slow_puller\$\$)");

sq($a, "INSERT INTO t SELECT g, 'before' FROM generate_series(1, 10) g");
is(sq($b, "SELECT replstamp.sync('a')"), '10', 'b pulls a');
is(sq($c, "SELECT replstamp.sync('a')"), '10', 'c pulls a');
my $id = sq($a, 'SELECT replica_id FROM replstamp.node');

# A crash restart of a: a new epoch of its ID, then more changes.
$a->stop('immediate');
start_verified($a, sub { $a->start });
my $epoch = sq($a, "SELECT max(first_serial) FROM replstamp.epoch WHERE replica_id = '$id'");
sq($a, "INSERT INTO t SELECT g, 'after' FROM generate_series(11, 20) g");
is(sq($c, "SELECT replstamp.sync('a')"), '10', 'c pulls what a wrote after its restart');
ok(sq($c, "SELECT serial >= $epoch FROM replstamp.vector WHERE replica_id = '$id'") eq 't'
	  && sq($c, "SELECT count(*) FROM replstamp.epoch WHERE replica_id = '$id' AND first_serial = $epoch") eq '1',
	"c holds a's ID past the new epoch ($epoch), with the epoch");
ok(sq($b, "SELECT serial < $epoch FROM replstamp.vector WHERE replica_id = '$id'") eq 't',
	'b holds it only up to before the epoch');

# c pulls from b; b pulls from a while b's handshake for c pauses between
# its reads.  The handshake must show b as it was before that pull or as
# it was after it, not the one half and the other half.
my $c_offset = -s $c->logfile;
my $b_offset = -s $b->logfile;
my $out = '';
my $h = psql_start($c, "SELECT replstamp.sync('b')", \$out);
$b->wait_for_log(qr/pausing the handshake for 8000 ms.*\n(?:.*\n)*.*pausing the handshake for 8000 ms/, $b_offset);
is(sq($b, "SELECT replstamp.sync('a')"), '10', "b pulls a's changes after the epoch while its handshake for c pauses");
ok($h->pumpable, "c's sync from b was still waiting on that handshake");
$h->finish;
like($out, qr/^\d+$/m, "c's sync from b returns") or diag($out);
my $c_log = slurp_file($c->logfile, $c_offset);
unlike($c_log, qr/parts from/, "c sees one history of a's ID in b's handshake");
is(sq($c, "SELECT count(*) FROM replstamp.peers WHERE name = 'b' AND status = 'ok'"), '1',
	'c shows b ok');

# And a, pulling from b, keeps its replica ID: b's handshake agrees with a's history.
add_peer($a, 'b', $b);
sq($a, "SELECT replstamp.sync('b')");
is(sq($a, 'SELECT replica_id FROM replstamp.node'), $id, 'a keeps its replica ID');
ok(!$a->log_contains(qr/retired replica ID/), 'a never rotated');

$_->stop for values %n;
done_testing();
