# Constraints hold on every node after the apply, and a change that would
# break one is a conflict with one outcome on every node, whatever order
# the changes arrive in, relays included (issue 21, item 4):
#
# 1. a deletes a parent while b inserts a child of it: the child goes
#    everywhere (the parent's deletion wins), recorded; with ON DELETE SET
#    NULL the child stays with a NULL key; a grandchild follows its parent.
# 2. a and b take the same value of a second unique key: the row whose
#    version is the later is deleted everywhere, recorded, restorable;
#    no sync stops.  The same for a deferrable unique key, checked at the
#    end of the applied transaction: a swap of two values inside one
#    transaction is no conflict.  (Replica mode skips the trigger that
#    checks a deferrable unique key: before, every node kept both rows.)
# 3. replstamp.on_constraint_conflict = 'stop': nothing is resolved; a
#    child whose parent is gone fails the sync (23503), a second unique key
#    stops it at the change (23505, the behaviour of 1.1).
#
# Before constraints.c, the apply ran with session_replication_role =
# replica and no foreign key fired: every node ended with the orphan
# child; and the second unique key stopped the sync, failing, until
# replstamp.skip().  Three nodes, syncs by hand in chosen orders.
#
# Copyright (c) 2026, the replstamp authors
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use ReplstampTest;

my $schema = q{
	CREATE EXTENSION replstamp;
	CREATE TABLE parent (id int PRIMARY KEY, name text);
	CREATE TABLE child (id int PRIMARY KEY, parent_id int REFERENCES parent, note text);
	CREATE TABLE grandchild (id int PRIMARY KEY, child_id int REFERENCES child ON DELETE CASCADE);
	CREATE TABLE nchild (id int PRIMARY KEY, parent_id int REFERENCES parent ON DELETE SET NULL);
	CREATE TABLE dchild (id int PRIMARY KEY,
		parent_id int REFERENCES parent DEFERRABLE INITIALLY DEFERRED);
	CREATE TABLE users (id int PRIMARY KEY, email text UNIQUE, note text);
	CREATE TABLE seats (id int PRIMARY KEY, seat int UNIQUE DEFERRABLE INITIALLY DEFERRED);
	SELECT replstamp.track(t) FROM unnest(ARRAY['parent', 'child', 'grandchild', 'nchild', 'dchild', 'users', 'seats']::regclass[]) t;
};
my @nodes = map { replstamp_node($_, sql => $schema) } qw(a b c);
my ($a, $b, $c) = @nodes;
add_mesh(@nodes);
my @tables = qw(parent child grandchild nchild dchild users seats);

sub sq { my ($node, $sql) = @_; return $node->safe_psql('postgres', $sql); }

# $node pulls from $peer (by name); returns the error text, '' if none.
sub pull
{
	my ($node, $peer) = @_;
	my ($rc, $out, $err) = $node->psql('postgres', "SELECT replstamp.sync('$peer')");
	return $rc == 0 ? '' : $err;
}

# Every node pulls from every other, three rounds; the errors met.
sub mesh_rounds
{
	my @errors;
	for (1 .. 3)
	{
		for my $x (@nodes)
		{
			for my $y (@nodes)
			{
				next if $x == $y;
				my $e = pull($x, $y->name);
				push @errors, $x->name . ' from ' . $y->name . ": $e" if $e ne '';
			}
		}
	}
	return @errors;
}

# Rows of child tables whose referenced row is missing, on $node.
sub orphans
{
	my ($node) = @_;
	return sq($node, q{
		SELECT (SELECT count(*) FROM child x WHERE x.parent_id IS NOT NULL
		          AND NOT EXISTS (SELECT 1 FROM parent p WHERE p.id = x.parent_id))
		     + (SELECT count(*) FROM nchild x WHERE x.parent_id IS NOT NULL
		          AND NOT EXISTS (SELECT 1 FROM parent p WHERE p.id = x.parent_id))
		     + (SELECT count(*) FROM dchild x WHERE x.parent_id IS NOT NULL
		          AND NOT EXISTS (SELECT 1 FROM parent p WHERE p.id = x.parent_id))
		     + (SELECT count(*) FROM grandchild g
		          WHERE NOT EXISTS (SELECT 1 FROM child x WHERE x.id = g.child_id))});
}

sub same_everywhere
{
	my ($what) = @_;
	my $want = node_state($a, @tables);
	is(node_state($_, @tables), $want, "$what: " . $_->name . ' holds the same rows and changes as a')
	  for ($b, $c);
	is(orphans($_), '0', "$what: no row of " . $_->name . ' lacks its referenced row') for @nodes;
}

# Parents every node holds.
sq($a, q{INSERT INTO parent SELECT g, 'p' || g FROM generate_series(1, 6) g});
sq($a, q{INSERT INTO child VALUES (50, 5, 'old'), (60, 6, 'old')});
is(join(' ', mesh_rounds()), '', 'the parents reach every node');

# 1a. a deletes parent 1 while b inserts a child of it; c pulls a first.
sq($a, 'DELETE FROM parent WHERE id = 1');
sq($b, q{INSERT INTO child VALUES (10, 1, 'late')});
is(pull($c, 'a'), '', 'c pulls the deletion of the parent from a');
is(pull($c, 'b'), '', 'c pulls the child from b: no error');
is(sq($c, 'SELECT count(*) FROM child WHERE id = 10'), '0', 'c: the child of the deleted parent is gone');
is(sq($c, q{SELECT count(*) FROM replstamp.conflicts WHERE kind = 'orphan_deleted' AND pk = '{"id": 10}'}),
	'1', 'c: recorded as orphan_deleted');

# 1b. The other order on b: the child is there first, the deletion comes.
# A grandchild under the late child follows it.
sq($b, q{INSERT INTO child VALUES (20, 2, 'late'); INSERT INTO grandchild VALUES (200, 20)});
sq($a, 'DELETE FROM parent WHERE id = 2');
is(pull($b, 'a'), '', 'b pulls the deletion of the parent of its own child: no error');
is(sq($b, 'SELECT count(*) FROM child WHERE id IN (10, 20)') . sq($b, 'SELECT count(*) FROM grandchild'),
	'00', 'b: its late children are deleted, and the grandchild with them');

# 1c. ON DELETE SET NULL: the late child keeps its row, without the key.
sq($a, 'DELETE FROM parent WHERE id = 3');
sq($b, q{INSERT INTO nchild VALUES (30, 3)});

# 1d. A relay: c pulls from b only, which has both the deletion of parent 4
# (pulled from a) and its own late child.
sq($b, q{INSERT INTO child VALUES (40, 4, 'late')});
sq($a, 'DELETE FROM parent WHERE id = 4');
is(pull($b, 'a'), '', 'b pulls the deletion of parent 4');
is(pull($c, 'b'), '', 'c pulls both through b');
is(sq($c, 'SELECT count(*) FROM child WHERE id = 40'), '0', 'c: the late child of parent 4 is gone');

is(join(' ', mesh_rounds()), '', 'every sync of the mesh goes through');
same_everywhere('parent deleted while a child was inserted');
is(sq($a, 'SELECT count(*) FROM child WHERE id IN (10, 20, 40)') . ' ' . sq($a, 'SELECT parent_id IS NULL FROM nchild WHERE id = 30'),
	'0 t', 'the late children are deleted, the SET NULL child kept without its key');
is(sq($a, q{SELECT count(*) FROM child WHERE id IN (50, 60)}), '2', 'children of live parents are untouched');
ok(sq($a, q{SELECT count(*) FROM replstamp.conflicts WHERE kind = 'orphan_updated' AND relation = 'public.nchild'}) +
	  sq($b, q{SELECT count(*) FROM replstamp.conflicts WHERE kind = 'orphan_updated' AND relation = 'public.nchild'}) >= 1,
	'the SET NULL is recorded as orphan_updated');

# 1e. No false orphans: a deferred key's child written before its parent
# in one transaction; a child whose parent comes from another replica ID,
# which c may pull after the child (ranges go one replica ID after the
# other).
sq($a, q{BEGIN; INSERT INTO dchild VALUES (70, 7); INSERT INTO parent VALUES (7, 'p7'); COMMIT});
sq($a, q{INSERT INTO parent VALUES (8, 'p8')});
is(pull($b, 'a'), '', 'b pulls the parents');
sq($b, q{INSERT INTO child VALUES (80, 8, 'b')});
is(pull($c, 'b'), '', 'c pulls the parent of a and the child of b, both through b');
is(sq($c, 'SELECT count(*) FROM child WHERE id = 80') . sq($c, 'SELECT count(*) FROM dchild WHERE id = 70'),
	'11', 'c: a child whose parent arrives later in the same sync or transaction stays');
is(join(' ', mesh_rounds()), '', 'every sync of the mesh goes through');
same_everywhere('children whose parents arrive after them');
is(sq($_, q{SELECT count(*) FROM replstamp.conflicts WHERE pk IN ('{"id": 70}', '{"id": 80}')}), '0',
	$_->name . ': no conflict recorded for them') for @nodes;

# 2. A second unique key taken on two nodes: a first, b later.  c pulls b
# first, then a; b pulls a; a pulls b.
sq($a, q{INSERT INTO users VALUES (1, 'q@x', 'a')});
sq($b, q{INSERT INTO users VALUES (2, 'q@x', 'b')});
sq($b, q{INSERT INTO users VALUES (3, 'r@x', 'b')});
sq($a, q{INSERT INTO users VALUES (4, 'r@x', 'a')});
my $lost = sq($b, q{SELECT replica_id || ' ' || serial FROM replstamp.changes WHERE relation = 'public.users' AND pk = '{"id": 2}'});
is(pull($c, 'b'), '', 'c pulls b\'s rows');
is(pull($c, 'a'), '', 'c pulls a\'s rows, which take the same e-mail addresses: no error');
is(sq($c, 'SELECT string_agg(id::text, \',\' ORDER BY id) FROM users'), '1,3',
	'c: of each pair, the row written first keeps the address');
is(join(' ', mesh_rounds()), '', 'every sync of the mesh goes through');
ok($_->poll_query_until('postgres', q{SELECT bool_and(status = 'ok') FROM replstamp.peers}),
	$_->name . ': every peer shows ok') for @nodes;
same_everywhere('a second unique key taken twice');
is(sq($a, 'SELECT string_agg(id::text, \',\' ORDER BY id) FROM users'), '1,3', 'the later rows are deleted everywhere');
my ($lid, $lserial) = split ' ', $lost;
is(sq($a, "SELECT kind || ' ' || (loser_image->>'email') FROM replstamp.conflicts "
		  . "WHERE loser_replica_id = '$lid' AND loser_serial = $lserial LIMIT 1"),
	'unique_lost q@x', 'a: the losing row is recorded with its image');
# Restorable, once its address is free.
sq($a, q{DELETE FROM users WHERE id = 1});
sq($a, "SELECT replstamp.restore_version('$lid', $lserial)");
is(join(' ', mesh_rounds()), '', 'the restored row replicates');
is(sq($c, q{SELECT email FROM users WHERE id = 2}), 'q@x', 'restore_version() brings the loser back everywhere');
same_everywhere('after restore_version()');

# 2b. A deferrable unique key taken on two nodes, a first.
sq($a, q{INSERT INTO seats VALUES (1, 100)});
sq($b, q{INSERT INTO seats VALUES (2, 100)});
is(join(' ', mesh_rounds()), '', 'a deferrable unique key taken twice: every sync goes through');
same_everywhere('a deferrable unique key taken twice');
is(sq($_, 'SELECT string_agg(id::text, \',\' ORDER BY id) FROM seats'), '1',
	$_->name . ': the later row is deleted') for @nodes;
is(sq($a, q{SELECT kind FROM replstamp.conflicts WHERE relation = 'public.seats' AND pk = '{"id": 2}'}),
	'unique_lost', 'and recorded as unique_lost');
# A swap inside one transaction passes through a state that breaks the key.
sq($a, q{INSERT INTO seats VALUES (3, 300), (4, 400)});
is(join(' ', mesh_rounds()), '', 'seats 300 and 400 reach every node');
sq($a, q{BEGIN; UPDATE seats SET seat = 400 WHERE id = 3; UPDATE seats SET seat = 300 WHERE id = 4; COMMIT});
is(join(' ', mesh_rounds()), '', 'a swap of two seats in one transaction replicates');
is(sq($_, 'SELECT string_agg(id || \':\' || seat, \',\' ORDER BY id) FROM seats'), '1:100,3:400,4:300',
	$_->name . ': both rows swapped, none deleted') for @nodes;
is(sq($a, q{SELECT count(*) FROM replstamp.conflicts WHERE relation = 'public.seats' AND pk IN ('{"id": 3}', '{"id": 4}')}),
	'0', 'no conflict recorded for the swap');

# 3. The user's choice: stop.  A child whose parent is gone fails the page
# before it commits (pages come in causal order: the parent is gone), so
# the child is not applied, and the sync stops there.
sq($a, q{INSERT INTO parent VALUES (9, 'p9')});
is(join(' ', mesh_rounds()), '', 'parent 9 reaches every node');
sq($a, q{ALTER SYSTEM SET replstamp.on_constraint_conflict = 'stop'; SELECT pg_reload_conf()});
sq($a, 'DELETE FROM parent WHERE id = 9');
sq($b, q{INSERT INTO child VALUES (90, 9, 'late')});
like(pull($a, 'b'), qr/rows of table public\.child reference a row of public\.parent that is gone \(foreign key "child_parent_id_fkey"\)/,
	'with on_constraint_conflict = stop, a child whose parent is gone fails the sync');
is(sq($a, q{SELECT last_error_sqlstate FROM replstamp.peers WHERE name = 'b'}) . ' '
	  . sq($a, 'SELECT count(*) FROM child WHERE id = 90'),
	'23503 0', 'replstamp.peers shows 23503, and the child is not applied');
sq($b, q{INSERT INTO users VALUES (7, 's@x', 'b')});
sq($a, q{INSERT INTO users VALUES (8, 's@x', 'a')});
like(pull($a, 'b'), qr/duplicate key value violates unique constraint "users_email_key"/,
	'with on_constraint_conflict = stop, the sync stops at the second unique key');
is(sq($a, q{SELECT status || ' ' || last_error_sqlstate FROM replstamp.peers WHERE name = 'b'}), 'failing 23505',
	'and replstamp.peers shows it failing');
# c, which holds parent 9 and not a's row 8, pulls b's changes.
sq($c, q{ALTER SYSTEM SET replstamp.on_constraint_conflict = 'stop'; SELECT pg_reload_conf()});
sq($b, q{INSERT INTO seats VALUES (9, 900)});
sq($c, q{INSERT INTO seats VALUES (10, 900)});
like(pull($c, 'b'), qr/rows of table public\.seats take the same value of the deferrable unique index "seats_seat_key"/,
	'with on_constraint_conflict = stop, the sync stops at a deferrable unique key');
is(sq($c, 'SELECT count(*) FROM seats WHERE id = 9') . ' ' . sq($c, q{SELECT last_error_sqlstate FROM replstamp.peers WHERE name = 'b'}),
	'0 23505', 'the row is not applied, and replstamp.peers shows 23505');

ok(!$_->log_contains(qr/terminated by signal/), $_->name . ': no process crashed') for @nodes;
done_testing();
