# A prune lets the database's sync lock go between its batches, and a sync
# may run in between: a conflict it records names a change the prune has
# not walked yet (here the latest version it overwrote).  The prune then
# removes that change from the log, as any change no row's latest; the
# conflict's copy of it is what replstamp.restore_version() brings back.
#
# replstamp.debug_prune_pause holds the prune between two batches of its
# walk (2,000 changes each), without the lock, long enough for the sync.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use ReplstampTest;

my ($a, $b) = map {
	replstamp_node($_, conf => ['replstamp.prune_interval = 0'], sql => $TRACK_T)
} qw(a b);
sub sq { my ($n, $sql) = @_; return $n->safe_psql('postgres', $sql); }
add_peer($b, 'a', $a);

# b's own changes: 2,500 rows, then the one that a will overwrite, in the
# second batch of the walk.
sq($b, q{INSERT INTO t SELECT g, 'b' FROM generate_series(1, 2500) g});
sq($b, q{INSERT INTO t VALUES (5000, 'written on b')});
my $b_id = sq($b, 'SELECT replica_id FROM replstamp.node');
my $x = sq($b, q{SELECT serial FROM replstamp.changes WHERE (pk->>'id')::int = 5000});
cmp_ok($x, '>', 2000, "b's change of row 5000 is walked in the prune's second batch");

sq($b, q{ALTER SYSTEM SET replstamp.debug_prune_pause = '5s'; SELECT pg_reload_conf()});
my $out = '';
my $prune = psql_start($b, 'SELECT replstamp.prune()', \$out);
$b->poll_query_until('postgres', q{SELECT count(*) > 0 FROM pg_stat_activity
	WHERE query = 'replstamp: prune paused between batches'})
  or die 'the prune never paused';

# Meanwhile a writes the same row later, and b pulls it: a conflict on b
# whose loser is b's change, not walked yet.
sq($a, q{INSERT INTO t VALUES (5000, 'written on a')});
is(sq($b, q{SELECT replstamp.sync('a')}), '1', 'b pulls the change while its prune is paused');
is(sq($b, qq{SELECT kind || ' ' || (loser_image->>'v') FROM replstamp.conflicts
	WHERE loser_replica_id = '$b_id' AND loser_serial = $x}),
	'overwrote written on b', "b records the conflict, naming its own change as the loser, with a copy");
$prune->finish;
like($out, qr/^\d+\n$/, 'the prune ends');

is(sq($b, qq{SELECT count(*) FROM replstamp.changes WHERE replica_id = '$b_id' AND serial = $x}), '0',
	'the prune walked the overwritten change, and removed it');
sq($b, qq{SELECT replstamp.restore_version('$b_id', $x)});
is(sq($b, 'SELECT v FROM t WHERE id = 5000'), 'written on b', 'and restore_version() brings it back');

sq($b, q{ALTER SYSTEM RESET replstamp.debug_prune_pause; SELECT pg_reload_conf()});
done_testing();
