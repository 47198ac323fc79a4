# Day-to-day operations, part 1: a conflict between two nodes is recorded
# on each, with the same winner, and the lost version can be made current
# again everywhere; a change that cannot be applied here blocks the peer
# until a superuser skips it, then the next changes flow and the skipped
# one is listed; replstamp.lag says what a peer holds that we have not
# pulled, and since when.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use ReplstampTest;

my ($a, $b, $c) = map {
	replstamp_node($_, conf => ['replstamp.prune_interval = 0', 'replstamp.replicate_ddl = off'], sql => $TRACK_T)
} qw(a b c);
sub sq { my ($n, $sql) = @_; return $n->safe_psql('postgres', $sql); }
my %node = (a => $a, b => $b, c => $c);
for my $x (qw(a b c))
{
	for my $y (qw(a b c))
	{
		add_peer($node{$x}, $y, $node{$y}) unless $x eq $y;
	}
}
sub sync_everywhere
{
	for (1 .. 2) { sq($_, 'SELECT replstamp.sync_all()') for ($a, $b, $c); }
}
sub value { my ($n, $id) = @_; return sq($n, "SELECT v FROM t WHERE id = $id"); }

sq($a, "INSERT INTO t VALUES (1, 'start'), (2, 'start')");
sync_everywhere();

# 1. Conflicting updates of one row on a and b.
sq($a, "UPDATE t SET v = 'a, earlier' WHERE id = 1");
sq($b, "UPDATE t SET v = 'b, later' WHERE id = 1");
sq($a, "SELECT replstamp.sync('b')");
sq($b, "SELECT replstamp.sync('a')");
for my $n ($a, $b)
{
	is(sq($n, q{SELECT count(*) FROM replstamp.conflicts WHERE pk = '{"id": 1}'}), '1',
		$n->name . ': one conflicts row for the row both nodes changed');
}
my $winner_a = sq($a, q{SELECT winner_replica_id || '/' || winner_serial FROM replstamp.conflicts WHERE pk = '{"id": 1}'});
my $winner_b = sq($b, q{SELECT winner_replica_id || '/' || winner_serial FROM replstamp.conflicts WHERE pk = '{"id": 1}'});
is($winner_a, $winner_b, 'both record the same winner');
is($winner_a, sq($b, q{SELECT replica_id || '/' || serial FROM replstamp.changes WHERE pk = '{"id": 1}' ORDER BY changed_at DESC LIMIT 1}),
	"the winner is b's later change");
is(sq($a, q{SELECT kind FROM replstamp.conflicts WHERE pk = '{"id": 1}'}), 'overwrote',
	"a records that b's change overwrote its own");
is(sq($b, q{SELECT kind FROM replstamp.conflicts WHERE pk = '{"id": 1}'}), 'incoming_lost',
	"b records that a's change lost");
is(value($a, 1), 'b, later', 'a holds the winner');
ok(sq($a, "SELECT conflicts FROM replstamp.peers WHERE name = 'b'") >= 1, 'replstamp.peers counts the conflict');
ok(sq($b, "SELECT conflicts FROM replstamp.tracked_table WHERE relation = 'public.t'") >= 1,
	'replstamp.tracked_table counts it per table');

# The lost version made current again, on every node.
my ($lid, $lserial) = split /\|/, sq($b, q{SELECT loser_replica_id, loser_serial FROM replstamp.conflicts WHERE pk = '{"id": 1}'});
sq($b, "SELECT replstamp.restore_version('$lid', $lserial)");
is(value($b, 1), 'a, earlier', 'restore_version makes the lost version current here');
sync_everywhere();
is(value($_, 1), 'a, earlier', $_->name . ': and everywhere, as a new change') for ($a, $b, $c);
my ($rc, $out, $err) = $b->psql('postgres', "SELECT replstamp.restore_version('$lid', 999999)");
like($err, qr/is not held here/, 'a change that is not held: a clear error');

# 2. A change that cannot be applied on b (a CHECK only b has).
sq($b, "ALTER TABLE t ADD CONSTRAINT no_poison CHECK (v NOT LIKE 'card %')");
sq($a, "INSERT INTO t VALUES (10, 'card 4111-1111-1111-1111')");
sq($a, "INSERT INTO t VALUES (11, 'after the poison')");
($rc, $out, $err) = $b->psql('postgres', "SELECT replstamp.sync('a')");
like($err, qr/violates check constraint "no_poison"/, 'the poison change stops the sync with a clear error');
like($err, qr/CONTEXT:  applying change [-0-9a-f]+\/\d+ \(INSERT\) of table public\.t from peer "a"/,
	'the error names the change and the table');
unlike($err, qr/Failing row contains/, 'without the row in the message');
is(sq($b, 'SELECT count(*) FROM t WHERE id IN (10, 11)'), '0', 'nothing of that page is applied');
sq($b, 'SELECT replstamp.sync_all()');
is(sq($b, "SELECT status FROM replstamp.peers WHERE name = 'a'"), 'failing', 'replstamp.peers shows the peer failing');
my $stamp = sq($b, "SELECT last_error_change FROM replstamp.peers WHERE name = 'a'");
like($stamp, qr/^[-0-9a-f]{36}\/\d+$/, "and which change: $stamp");
unlike(sq($b, "SELECT last_error FROM replstamp.peers WHERE name = 'a'"), qr/4111/,
	'last_error holds no row value');
($rc, $out, $err) = $b->psql('postgres', "SELECT replstamp.sync('a')");
isnt($rc, 0, 'without skip() the next sync fails again: nothing is skipped silently');

my ($sid, $sserial) = split m{/}, $stamp;
sq($b, 'CREATE ROLE plain LOGIN');
($rc, $out, $err) = $b->psql('postgres', "SET ROLE plain; SELECT replstamp.skip('$sid', $sserial)");
like($err, qr/permission denied/, 'ordinary users cannot skip changes');
sq($b, "SELECT replstamp.skip('$sid', $sserial)");
ok(sq($b, "SELECT replstamp.sync('a')") >= 1, 'after skip() the sync goes on');
is(value($b, 11), 'after the poison', 'the next change arrives');
is(sq($b, 'SELECT count(*) FROM t WHERE id = 10'), '0', 'the skipped one is not applied');
is(sq($b, "SELECT count(*) FROM replstamp.skipped WHERE replica_id = '$sid' AND serial = $sserial AND skipped_at IS NOT NULL AND error LIKE '%no_poison%'"),
	'1', 'replstamp.skipped lists it, with its error');
is(sq($b, "SELECT count(*) FROM replstamp.changes WHERE replica_id = '$sid' AND serial = $sserial"), '1',
	'and holds it, so that it is served on');
sq($c, "SELECT replstamp.sync('b')");
is(value($c, 10), 'card 4111-1111-1111-1111', 'a node without the constraint gets it through b');
($rc, $out, $err) = $b->psql('postgres', "SELECT replstamp.skip('$sid', $sserial)");
like($err, qr/is held here already/, 'skipping a change that is held: a clear error');

# 3. Lag: a peer's changes we have not pulled, and since when.
sq($c, "INSERT INTO t SELECT g, 'lagging' FROM generate_series(100, 149) g");
sq($a, 'SELECT replstamp.sync_all()');
is(sq($a, "SELECT sum(changes_behind) FROM replstamp.lag WHERE peer = 'c'"), '0',
	'after a sync nothing is behind');
sq($c, "INSERT INTO t SELECT g, 'lagging' FROM generate_series(150, 159) g");
sq($c, q{CREATE FUNCTION public.boom() RETURNS trigger LANGUAGE plpgsql AS $$
	BEGIN RAISE EXCEPTION 'not now'; END $$});
sq($a, q{CREATE FUNCTION public.boom() RETURNS trigger LANGUAGE plpgsql AS $$
	BEGIN RAISE EXCEPTION 'not now'; END $$;
	CREATE TRIGGER boom BEFORE INSERT ON t FOR EACH ROW EXECUTE FUNCTION public.boom();
	ALTER TABLE t ENABLE ALWAYS TRIGGER boom});
$a->psql('postgres', "SELECT replstamp.sync('c')");
is(sq($a, "SELECT changes_behind FROM replstamp.lag WHERE peer = 'c' AND replica_id = (SELECT replica_id FROM replstamp.peers WHERE name = 'c')"),
	'10', 'a failing sync leaves lag showing the 10 changes a lacks from c');
ok(sq($a, "SELECT oldest_behind_age > interval '0' FROM replstamp.lag WHERE peer = 'c' AND changes_behind > 0") eq 't',
	'and how old the oldest of them is');
sq($a, 'DROP TRIGGER boom ON t');
sq($a, "SELECT replstamp.sync('c')");
is(sq($a, "SELECT sum(changes_behind) FROM replstamp.lag WHERE peer = 'c'"), '0', 'once pulled, nothing is behind');

sync_everywhere();
my $content = sq($a, "SELECT string_agg(id || ':' || v, ',' ORDER BY id) FROM t WHERE id <> 10");
is(sq($_, "SELECT string_agg(id || ':' || v, ',' ORDER BY id) FROM t WHERE id <> 10"), $content,
	$_->name . ' holds the same rows (but for the skipped one)') for ($b, $c);

$_->stop for ($a, $b, $c);
done_testing();
