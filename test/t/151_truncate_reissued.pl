# A TRUNCATE that a rotation re-issues covers what it covered, and no
# more.  Node a is put back in time without the backup mark (its cold copy
# restored) after b pulled rows 11-15 from it; the copy writes rows 16-20,
# truncates, and writes row 21, with the serials b holds for 11-15.  Its
# peers catch it, it rotates and re-issues those four changes under its new
# ID.  The re-issued TRUNCATE must delete the rows the copy had seen (1-10,
# and 16-20 under their new stamps), and must keep 11-15, which carry the
# stamps it covered in the history it parted from, and row 21: every node
# ends with 11-15 and 21.
use strict;
use warnings;
use File::Path qw(rmtree);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use ReplstampTest;

sub sq { my ($n, $sql) = @_; return $n->safe_psql('postgres', $sql); }

my @conf = ('replstamp.prune_interval = 0');
my @nodes = map { replstamp_node($_, template => 1, conf => \@conf, sql => $ReplstampTest::TRACK_T) } qw(a b c);
my ($a, $b, $c) = @nodes;
add_mesh(@nodes);

sq($a, "INSERT INTO t SELECT g, 'a' FROM generate_series(1, 10) g");
sq($_, "SELECT replstamp.sync('a')") for ($b, $c);
my $id = sq($a, 'SELECT replica_id FROM replstamp.node');

# The cold copy, then rows the copy will not have, which b pulls.
my $copy = $PostgreSQL::Test::Utils::tmp_check . '/cold_copy_151';
$a->stop;
system('cp', '-a', $a->data_dir, $copy) == 0 or die 'cp failed';
start_verified($a, sub { $a->start });
sq($a, "INSERT INTO t SELECT g, 'lost by the rollback' FROM generate_series(11, 15) g");
is(sq($b, "SELECT replstamp.sync('a')"), '5', "b pulls a's rows 11-15");

# The copy put back: it writes, truncates and writes again.
$a->stop;
rmtree($a->data_dir);
system('cp', '-a', $copy, $a->data_dir) == 0 or die 'cp failed';
start_verified($a, sub { $a->start });
sq($a, "INSERT INTO t SELECT g, 'after the rollback' FROM generate_series(16, 20) g");
sq($a, 'TRUNCATE t');
sq($a, "INSERT INTO t VALUES (21, 'after the truncate')");
is(sq($a, q{SELECT count(*) FROM replstamp.changes WHERE op = 'TRUNCATE'}), '1', 'the copy stamped its TRUNCATE');

# The sync workers from now on: a is caught and rotates.
set_guc($_, 'replstamp.sync_interval', 1) for @nodes;
$a->poll_query_until('postgres', "SELECT replica_id <> '$id' FROM replstamp.node")
  or die 'the rolled-back node never rotated';
my $new = sq($a, 'SELECT replica_id FROM replstamp.node');
is(sq($a, q{SELECT replica_id FROM replstamp.changes WHERE op = 'TRUNCATE'}), $new,
	'the TRUNCATE was re-issued under the new ID');
my $state = wait_converged(\@nodes, ['t'], 'a TRUNCATE re-issued by a rotation');
for my $x (@nodes)
{
	is( sq($x, q{SELECT string_agg(id || '=' || v, ',' ORDER BY id) FROM t}),
		join(',', (map { "$_=lost by the rollback" } 11 .. 15), '21=after the truncate'),
		$x->name . ': the re-issued TRUNCATE deleted what the copy had seen and kept the rows of the other history');
}

done_testing();
