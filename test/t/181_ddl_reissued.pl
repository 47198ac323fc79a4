# Schema changes that a rotation re-issues are applied once on every node,
# raise no conflict with themselves, and still let a later schema change
# through.  Three nodes, a full mesh, syncs by hand.
#
# Inside a backup window on a (prepare_backup(), never finished), a makes
# three schema changes of t: CREATE INDEX without a name (PostgreSQL names
# it t_v_idx; a second run would make t_v_idx1), ADD COLUMN x int and
# ALTER COLUMN x TYPE bigint, with rows around them.  b pulls them; c does
# not.  a crashes and restarts marked 'backup': it rotates and re-issues
# them under its new ID, with its vector of the old ID lowered below them.
#   - b, which holds the originals, receives the re-issued copies;
#   - c, which holds nothing of them, receives only the copies (ADD COLUMN
#     and ALTER COLUMN TYPE of the same column, one after the other);
#   - a pulls the originals back from b.
# None of it may stop a sync, nor run a statement twice.  Then c, which
# knows the ALTER COLUMN TYPE only by its new stamp, changes column x
# again: a must take it as made after, not concurrently with, its own.
# Every node ends with the same definition of t, the same rows and change
# log, no failing peer, one schema_change row per schema change, and no
# conflict of a schema change.
#
# Then a is put back in time without a mark (its cold copy restored) after
# b pulled rows from it; the copy adds column z and changes its type, with
# the serials b holds for those rows.  Its peers catch it, it rotates and
# re-issues both schema changes, whose old stamps name b's rows: c, which
# receives only the copies, must apply both without a conflict between them.
#
# Without the re-issue of the record (ddl_reissue()): a's sync from b
# fails on the primary key of schema_change (the original pulled back);
# b's and c's stop at the re-issued ALTER COLUMN TYPE, taken as concurrent
# with the ADD COLUMN (its original, or its copy); a takes c's later
# change as concurrent with its own; after the rollback, c takes the
# copies of ADD COLUMN z and ALTER COLUMN z TYPE as concurrent.
use strict;
use warnings;
use File::Path qw(rmtree);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use ReplstampTest;

sub sq { my ($n, $sql) = @_; return $n->safe_psql('postgres', $sql); }

my @nodes = map {
	replstamp_node($_, template => 1, conf => ['replstamp.prune_interval = 0'], sql => $ReplstampTest::TRACK_T)
} qw(a b c);
my ($a, $b, $c) = @nodes;
add_mesh(@nodes);

# A sync that fails leaves its error in replstamp.peer, which the test reads.
sub sync_round
{
	for my $x (@nodes)
	{
		$x->psql('postgres', "SELECT replstamp.sync('" . $_->name . "')") for grep { $_ != $x } @nodes;
	}
}

# No peer of node x has an error left (the errors in the check's name).
sub no_failed_sync
{
	my ($x, $when) = @_;
	is(sq($x, q{SELECT count(*) FROM replstamp.peer WHERE last_error IS NOT NULL}), '0',
		$x->name . ": no sync failed $when ("
		  . sq($x, q{SELECT string_agg(name || ': ' || last_error, '; ') FROM replstamp.peer}) . ')');
	return;
}

sq($a, q{INSERT INTO t SELECT g, 'before' FROM generate_series(1, 5) g});
sync_round();
my $old = sq($a, 'SELECT replica_id FROM replstamp.node');

sq($a, q{SELECT replstamp.prepare_backup('never finished')});
sq($a, q{CREATE INDEX ON t (v)});
sq($a, q{ALTER TABLE t ADD COLUMN x int});
sq($a, q{INSERT INTO t SELECT g, 'in the window', g FROM generate_series(6, 10) g});
sq($a, q{ALTER TABLE t ALTER COLUMN x TYPE bigint});
sq($a, q{INSERT INTO t VALUES (11, 'in the window', 5000000000)});
is(sq($b, q{SELECT replstamp.sync('a')}), '9', 'b pulls the three schema changes and six rows made in the window');

# The crash inside the window: a restarts marked 'backup' and rotates.
$a->stop('immediate');
start_verified($a, sub { $a->start });
my $new = sq($a, 'SELECT replica_id FROM replstamp.node');
isnt($new, $old, 'a rotated');
is(sq($a, qq{SELECT count(*) FROM replstamp.changes WHERE op = 'DDL' AND replica_id = '$new'}), '3',
	'its three schema changes were re-issued under the new ID');
is(sq($a, qq{SELECT count(*) FROM replstamp.schema_change WHERE replica_id = '$old'}), '0',
	'and its record of them no longer goes by the stamps it dropped');

sync_round();
sync_round();
for my $x (@nodes)
{
	no_failed_sync($x, 'on the re-issued schema changes');
	is(sq($x, q{SELECT string_agg(indexname, ',' ORDER BY indexname) FROM pg_indexes WHERE tablename = 't'}),
		't_pkey,t_v_idx', $x->name . ': the CREATE INDEX ran once');
	is(sq($x, q{SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 't'::regclass AND attname = 'x'}),
		'bigint', $x->name . ': x is bigint');
	is(sq($x, q{SELECT count(*) FROM replstamp.schema_change}), '3',
		$x->name . ': one schema_change row for each schema change');
}
my @schemas = map { sq($_, q{SELECT replstamp.table_schema('t')}) } @nodes;
is($schemas[$_], $schemas[0], $nodes[$_]->name . ' has the definition of t that a has') for (1, 2);
wait_converged(\@nodes, ['t'], 'schema changes re-issued by a rotation');

# c knew the ALTER COLUMN TYPE by its new stamp only, when it changes x.
sq($c, q{ALTER TABLE t ALTER COLUMN x SET DEFAULT 7});
sq($c, q{INSERT INTO t (id, v) VALUES (12, 'after')});
sync_round();
sync_round();
for my $x (@nodes)
{
	no_failed_sync($x, 'on the later schema change');
	is(sq($x, q{SELECT x FROM t WHERE id = 12}), '7', $x->name . ': the later default applies');
}
@schemas = map { sq($_, q{SELECT replstamp.table_schema('t')}) } @nodes;
is($schemas[$_], $schemas[0], $nodes[$_]->name . ' has the definition of t that a has, after the later change') for (1, 2);
wait_converged(\@nodes, ['t'], 'a later schema change');

# The cold copy, then rows the copy will not have, which b pulls.
my $copy = $PostgreSQL::Test::Utils::tmp_check . '/cold_copy_181';
$a->stop;
system('cp', '-a', $a->data_dir, $copy) == 0 or die 'cp failed';
start_verified($a, sub { $a->start });
sq($a, q{INSERT INTO t (id, v) SELECT g, 'lost by the rollback' FROM generate_series(101, 105) g});
is(sq($b, q{SELECT replstamp.sync('a')}), '5', "b pulls a's rows 101-105");

$a->stop;
rmtree($a->data_dir);
system('cp', '-a', $copy, $a->data_dir) == 0 or die 'cp failed';
start_verified($a, sub { $a->start });
sq($a, q{ALTER TABLE t ADD COLUMN z int});
sq($a, q{INSERT INTO t (id, v, z) VALUES (106, 'after the rollback', 1)});
sq($a, q{ALTER TABLE t ALTER COLUMN z TYPE bigint});
my $rolled = sq($a, 'SELECT replica_id FROM replstamp.node');
for (1 .. 20)
{
	$b->psql('postgres', q{SELECT replstamp.sync('a')});
	$a->psql('postgres', q{SELECT replstamp.sync('b')});
	last if sq($a, 'SELECT replica_id FROM replstamp.node') ne $rolled;
	sleep 1;
}
isnt(sq($a, 'SELECT replica_id FROM replstamp.node'), $rolled, 'the rolled-back copy was caught and rotated');
is(sq($a, q{SELECT count(*) FROM replstamp.changes WHERE op = 'DDL' AND replica_id = (SELECT replica_id FROM replstamp.node)}),
	'2', 'it re-issued its two schema changes');

sync_round();
sync_round();
for my $x (@nodes)
{
	no_failed_sync($x, 'after the rollback');
	is(sq($x, q{SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 't'::regclass AND attname = 'z'}),
		'bigint', $x->name . ': z is bigint');
	is(sq($x, q{SELECT count(*) FROM t WHERE id > 100}), '6', $x->name . ': both histories\' rows');
	is(sq($x, q{SELECT count(*) FROM replstamp.schema_change}), '6',
		$x->name . ': one schema_change row for each schema change');
}
@schemas = map { sq($_, q{SELECT replstamp.table_schema('t')}) } @nodes;
is($schemas[$_], $schemas[0], $nodes[$_]->name . ' has the definition of t that a has, after the rollback') for (1, 2);
wait_converged(\@nodes, ['t'], 'schema changes re-issued by a rotation after a rollback');
# No conflict at all: a re-issued row meeting its original is one write
# under two stamps (apply.c same_write()), and no schema change conflicts.
# (Before same_write(), each node recorded its re-issued rows against
# their originals: `overwrote` and `incoming_lost` with one changed_at.)
is(sq($_, q{SELECT count(*) FROM replstamp.conflicts}),
	'0', $_->name . ': no conflict recorded, not even of a re-issued row with its original')
  for @nodes;

# A peer that sends a schema change with a malformed id or reissued_from:
# the sync stops at that change, named, and takes nothing of it; once the
# peer sends sense again, it applies.
sq($c, q{ALTER TABLE t ADD COLUMN w int});
my ($cid, $cserial) = split /\|/,
  sq($c, q{SELECT replica_id, serial FROM replstamp.changes
	WHERE op = 'DDL' AND replica_id = (SELECT replica_id FROM replstamp.node) ORDER BY serial DESC LIMIT 1});
my $image = sq($c, "SELECT row_image FROM replstamp.changes WHERE replica_id = '$cid' AND serial = $cserial");
for my $bad (['{id}', q{'"not-a-uuid"'}, qr/sent a malformed schema change\nDETAIL:  Its "id" is not a uuid\./],
	['{reissued_from}', q{'{"x": 1}'}, qr/sent a malformed schema change\nDETAIL:  Its "reissued_from" is not an object of stamps\./])
{
	sq($c, "UPDATE replstamp.changes SET row_image = jsonb_set(row_image, '$bad->[0]', $bad->[1]) "
		  . "WHERE replica_id = '$cid' AND serial = $cserial");
	my ($rc, $out, $err) = $b->psql('postgres', q{SELECT replstamp.sync('c')});
	like($err, $bad->[2], "a schema change with a malformed $bad->[0] is refused");
	is(sq($b, q{SELECT status || ' ' || coalesce(last_error_change, '-') FROM replstamp.peers WHERE name = 'c'}),
		"failing $cid/$cserial", 'the peer shows failing, at that change');
	is(sq($b, q{SELECT count(*) FROM pg_attribute WHERE attrelid = 't'::regclass AND attname = 'w'}), '0',
		'and nothing of it is applied');
	ok(sq($b, "SELECT coalesce((SELECT serial FROM replstamp.vector WHERE replica_id = '$cid'), 0) < $cserial") eq 't',
		'nor held');
	sq($c, "UPDATE replstamp.changes SET row_image = '$image' WHERE replica_id = '$cid' AND serial = $cserial");
}
$b->psql('postgres', q{SELECT replstamp.sync('c')});
is(sq($b, q{SELECT count(*) FROM pg_attribute WHERE attrelid = 't'::regclass AND attname = 'w'}), '1',
	'sent as made, it applies');

done_testing();
