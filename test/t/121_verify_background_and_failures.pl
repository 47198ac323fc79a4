# The background check (replstamp.verify_interval) warns and shows a peer
# whose rows differ as diverged, with the count, in replstamp.peers, and
# clears it once a repair made the rows equal; a peer that disappears in
# the middle of a verification gives a clear error and changes nothing;
# nodes that do not hold the same changes are refused, not compared; a
# pulling credential may verify, but reads no content of a table it may
# not SELECT.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use ReplstampTest;

my ($a, $b, $c) = map {
	replstamp_node($_, conf => ['replstamp.prune_interval = 0'], sql => $TRACK_T)
} qw(a b c);
add_mesh($a, $b, $c);
sub sq { my ($node, $sql) = @_; return $node->safe_psql('postgres', $sql); }
sub sync_everywhere
{
	for (1 .. 2) { sq($_, 'SELECT replstamp.sync_all()') for ($a, $b, $c); }
}
sub peer_state
{
	my ($node, $peer) = @_;
	return sq($node, "SELECT status || ' ' || coalesce(rows_differing::text, '-') FROM replstamp.peers WHERE name = '$peer'");
}

sq($a, q{INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 1000) g});
sq($b, q{UPDATE t SET v = 'b' WHERE id % 10 = 0});
sq($c, q{DELETE FROM t WHERE id % 100 = 1});
sync_everywhere();
for my $pair ([$a, 'c'], [$b, 'a'], [$c, 'b'])
{
	my ($node, $peer) = @$pair;
	is(sq($node, "SELECT count(*) FROM replstamp.verify('$peer')"), '0', $node->name . " and $peer agree");
	is(sq($node, "SELECT rows_read FROM replstamp.verification WHERE peer = '$peer'"), '0',
		'from their digests alone: no row read');
}

# A rotation: the old and the new replica ID are in both vectors alike.
sq($a, q{SELECT replstamp.rotate('verify test')});
sq($a, q{UPDATE t SET v = 'after the rotation' WHERE id = 4});
sync_everywhere();
is(sq($b, q{SELECT count(*) FROM replstamp.verify('a')}), '0', 'after a rotation of a, b and a still agree');
is(sq($b, "SELECT rows_read FROM replstamp.verification WHERE peer = 'a'"), '0', 'reading no row');

# 1. Nodes that do not hold the same changes are not compared.
sq($a, q{UPDATE t SET v = 'not pulled yet' WHERE id = 2});
my ($rc, $out, $err) = $b->psql('postgres', q{SELECT * FROM replstamp.verify('a')});
like($err, qr/this node and peer "a" do not hold the same changes/, 'unequal vectors: refused');
like($err, qr/HINT:  Verification compares two nodes at the same vector/, 'with a hint');
sync_everywhere();

# 2. The background check.  c's row_version loses track of a row's version
# (as a lost apply would leave it), and the digests follow it.
sq($c, q{UPDATE replstamp.row_version SET serial = serial + 1000000 WHERE relation = 'public.t' AND pk = '{"id": 3}'});
sq($c, q{SELECT replstamp.rebuild_digests('t')});
my $offset = -s $a->logfile;
set_guc($a, 'replstamp.verify_interval', '1s');
$a->poll_query_until('postgres', q{SELECT status = 'diverged' FROM replstamp.peers WHERE name = 'c'})
  or die 'the background check never saw c diverge';
is(peer_state($a, 'c'), 'diverged 1', 'replstamp.peers: c diverged, 1 row');
is(peer_state($a, 'b'), 'ok 0', 'b checked and agrees');
$a->wait_for_log(qr/WARNING:  replstamp: 1 rows differ between this node and peer "c"/, $offset);
ok(1, 'the background check warned');
is(sq($a, q{SELECT count(*) FROM replstamp.problems WHERE object = 'c'}), '1', 'replstamp.problems lists it');
like(sq($a, q{SELECT problem || ' | ' || detail || ' | ' || hint FROM replstamp.problems WHERE object = 'c'}),
	qr/^peer diverged \| replstamp\.verify\(\) found 1 rows that differ from the peer's at the same vector \(.*\)\. \| List them with SELECT \* FROM replstamp\.verify\('c'\), make them equal with replstamp\.repair\(\)\.$/,
	'as rows that differ, with what to do');

# Repair on a from c's view of the row: a new stamped change, everywhere.
is(sq($a, q{SELECT action FROM replstamp.repair('c', 't', ARRAY['{"id": 3}'::jsonb])}), 'update',
	'repair writes the row as a new change');
sync_everywhere();
$a->poll_query_until('postgres', q{SELECT status = 'ok' AND rows_differing = 0 AND verified_at > now() - interval '1s'
                                     FROM replstamp.peers WHERE name = 'c'})
  or die 'the background check never cleared c';
is(peer_state($a, 'c'), 'ok 0', 'after the repair the background check clears it');
set_guc($a, 'replstamp.verify_interval', '0');

# 3. A peer that disappears mid-verification: a clear error, nothing
# changed here.
my $before = sq($a, q{SELECT verified_at FROM replstamp.verification WHERE peer = 'b'});
my $out_v = '';
my $h = psql_start($a, q{SET replstamp.debug_verify_pause = '60s'; SELECT * FROM replstamp.verify('b')}, \$out_v);
$a->poll_query_until('postgres', q{SELECT count(*) > 0 FROM pg_stat_activity WHERE query LIKE '%replstamp.verify(''b'')%' AND wait_event = 'Extension'})
  or die 'verify never paused';
$b->stop('immediate');
$h->finish;
like($out_v, qr/ERROR:  peer "b" failed during verification/,
	'a peer gone mid-verify: a clear error');
is(sq($a, q{SELECT verified_at FROM replstamp.verification WHERE peer = 'b'}), $before,
	'nothing recorded of the failed verification');
$b->start;

# 4. A pulling credential: plain verification needs only what pulling
# needs; deep needs SELECT on the table.
sq($b, q{CREATE ROLE puller LOGIN REPLICATION;
         GRANT USAGE ON SCHEMA replstamp TO puller;
         GRANT SELECT ON replstamp.changes TO puller;
         GRANT EXECUTE ON FUNCTION replstamp.serve(jsonb), replstamp.verify_digests(jsonb),
               replstamp.verify_rows(jsonb), replstamp.verify_images(text, jsonb[]) TO puller});
sq($a, q{SELECT replstamp.drop_peer('b')});
sq($a, "SELECT replstamp.add_peer('b', \$\$" . $b->connstr('postgres') . " user=puller\$\$)");
sync_everywhere();
is(sq($a, q{SELECT count(*) FROM replstamp.verify('b')}), '0', 'a pulling credential can verify');
($rc, $out, $err) = $a->psql('postgres', q{SELECT * FROM replstamp.verify('b', deep => true)});
like($err, qr/permission denied for table public.t/, 'but not deep without SELECT on the table');
($rc, $out, $err) = $a->psql('postgres', q{SELECT * FROM replstamp.repair('b', 't', ARRAY['{"id": 2}'::jsonb])});
like($err, qr/permission denied for table public.t/, 'nor read rows for a repair');
sq($b, q{GRANT SELECT ON t TO puller});
is(sq($a, q{SELECT count(*) FROM replstamp.verify('b', deep => true)}), '0', 'with SELECT, deep works');

done_testing();
