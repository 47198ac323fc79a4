# replstamp.verify(): two nodes at the same vector that agree return no
# row and read digests only, no row; each kind of difference is named row
# by row (missing here, missing there, other version, other content);
# writes the stamp trigger never saw are found by deep verification only;
# repair() makes the rows equal as new stamped changes that reach every
# node; a dry run changes nothing; every repair is recorded.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use ReplstampTest;

my %n;
for my $name (qw(a b c))
{
	$n{$name} = replstamp_node($name, conf => ['replstamp.prune_interval = 0'], sql => q{
		CREATE EXTENSION replstamp;
		CREATE TABLE t (id int PRIMARY KEY, v text, at timestamptz);
		CREATE TABLE u (k text, n int, w numeric, PRIMARY KEY (k, n));
		SELECT replstamp.track('t');
		SELECT replstamp.track('u');
	});
}
my ($a, $b, $c) = @n{qw(a b c)};
add_mesh($a, $b, $c);
sub sq { my ($node, $sql) = @_; return $node->safe_psql('postgres', $sql); }
sub sync_everywhere
{
	for (1 .. 2) { sq($_, 'SELECT replstamp.sync_all()') for ($a, $b, $c); }
}
sub verify
{
	my ($node, $peer, $extra) = @_;
	$extra //= '';
	return sq($node, "SELECT relation, pk, difference FROM replstamp.verify('$peer'$extra) ORDER BY 1, 3, 2::text");
}
sub last_run
{
	my ($node, $peer) = @_;
	return sq($node, "SELECT differences, digests_read, rows_read FROM replstamp.verification WHERE peer = '$peer'");
}
# Write on $node without the stamp trigger, as pg_restore --disable-triggers
# or a superuser who switched the DDL guard off would.
sub unstamped
{
	my ($node, $sql) = @_;
	sq($node, qq{
		ALTER EVENT TRIGGER replstamp_ddl_guard DISABLE;
		ALTER TABLE t DISABLE TRIGGER replstamp_stamp;
		$sql;
		ALTER TABLE t ENABLE ALWAYS TRIGGER replstamp_stamp;
		ALTER EVENT TRIGGER replstamp_ddl_guard ENABLE ALWAYS;
	});
}

sq($a, q{INSERT INTO t SELECT g, 'v' || g, '2026-01-01 00:00+00'::timestamptz + g * interval '1 min' FROM generate_series(1, 2000) g});
sq($b, q{INSERT INTO u SELECT 'k' || (g % 7), g, g / 3.0 FROM generate_series(1, 500) g});
sq($c, q{UPDATE t SET v = 'from c' WHERE id <= 10});
sync_everywhere();
sq($c, q{DELETE FROM t WHERE id BETWEEN 100 AND 120});
sq($a, q{UPDATE u SET n = n + 1000 WHERE n <= 20});
sq($b, q{UPDATE t SET v = 'b again' WHERE id <= 5});
sync_everywhere();
is(sq($b, 'SELECT count(*) FROM t'), '1979', 'b holds every row of t');

# The digests kept as rows were stamped and applied (inserts, updates,
# deletes, key changes) are those computed afresh from row_version.
my $digests = q{SELECT coalesce(md5(string_agg(relation || bucket || digest::text || nrows, ',' ORDER BY relation, bucket)), '')
                  FROM replstamp.row_digest WHERE nrows <> 0 OR digest <> decode(repeat('00', 32), 'hex')};
for my $node ($a, $b, $c)
{
	my $kept = sq($node, $digests);
	sq($node, 'SELECT replstamp.rebuild_digests()');
	is(sq($node, $digests), $kept, $node->name . ': the digests kept are those rebuilt from row_version');
}

# 1. Equal nodes: nothing, and only digests were read.
is(verify($a, 'b'), '', 'a and b agree: verify returns nothing');
my ($d, $dr, $rr) = split /\|/, last_run($a, 'b');
is($d, 0, 'no difference recorded');
is($rr, 0, 'no row was read');
cmp_ok($dr, '<=', 2 * 2 * 4096, "only bucket digests were read ($dr)");
is(sq($a, q{SELECT status || ' ' || rows_differing FROM replstamp.peers WHERE name = 'b'}), 'ok 0',
	'replstamp.peers: ok, no row differing');
is(verify($b, 'c', ', deep => true'), '', 'b and c agree, deep');
is(verify($c, 'a', q{, tables => ARRAY['u'::regclass]}), '', 'c and a agree on u');

# 2. Writes the trigger never saw, on b: a changed value, an extra row, a
# missing row.
unstamped($b, q{UPDATE t SET v = 'silent' WHERE id = 5; INSERT INTO t VALUES (5000, 'extra', NULL); DELETE FROM t WHERE id = 7});
is(verify($a, 'b'), '', 'plain verify does not see writes made without the trigger');
is(verify($a, 'b', ', deep => true'),
	qq{public.t|{"id": 5000}|missing here\npublic.t|{"id": 7}|missing there\npublic.t|{"id": 5}|other content},
	'deep verify names each: same stamp other content, missing there, missing here');
is(sq($a, q{SELECT stamp_here = stamp_there FROM replstamp.verify('b', deep => true) WHERE pk = '{"id": 5}'}), 't',
	'the row of other content has the same stamp on both nodes');
is(sq($a, q{SELECT status || ' ' || rows_differing FROM replstamp.peers WHERE name = 'b'}), 'diverged 3',
	'replstamp.peers: diverged, 3 rows');

# 3. Repair on b from a: dry run first.
is(sq($b, q{SELECT pk, action FROM replstamp.repair('a', 't', dry_run => true) ORDER BY action}),
	qq{{"id": 5000}|delete\n{"id": 7}|insert\n{"id": 5}|update}, 'dry run says what it would do');
is(sq($b, q{SELECT v FROM t WHERE id = 5}), 'silent', 'the dry run changed nothing');
is(sq($b, 'SELECT count(*) FROM replstamp.repairs'), '0', 'and recorded nothing');
my $next = sq($b, 'SELECT replstamp.next_serial()');
is(sq($b, q{SELECT pk, action FROM replstamp.repair('a', 't') ORDER BY action}),
	qq{{"id": 5000}|delete\n{"id": 7}|insert\n{"id": 5}|update}, 'repair writes the three rows');
is(sq($b, "SELECT count(*) FROM replstamp.changes WHERE serial >= $next AND replica_id = (SELECT replica_id FROM replstamp.node)"),
	'3', 'as three changes stamped on b');
is(sq($b, 'SELECT action || count(*) FROM replstamp.repairs GROUP BY action ORDER BY 1'), "delete1\ninsert1\nupdate1",
	'each recorded in replstamp.repairs');
sync_everywhere();
is(verify($a, 'b', ', deep => true'), '', 'after the repair a and b agree, deep');
is(verify($c, 'b', ', deep => true'), '', 'the repair reached c');
is(sq($a, q{SELECT status || ' ' || rows_differing FROM replstamp.peers WHERE name = 'b'}), 'ok 0',
	'replstamp.peers: ok again');

# 4. Stamped differences between nodes at the same vector cannot come from
# replication; make them by editing row_version's bookkeeping on c as a
# bug would: a version, a missing and an extra row, for plain verify.
unstamped($c, q{UPDATE t SET v = 'only c' WHERE id = 11});
is(verify($a, 'c'), '', 'plain verify still sees no stamp difference');
sq($c, q{UPDATE t SET v = 'stamped on c' WHERE id = 12});
sq($a, q{SELECT replstamp.sync('c')});
sq($b, q{SELECT replstamp.sync('c')});
is(verify($a, 'c'), '', 'a stamped change that replicated is no difference');

# 5. Differences in the change bookkeeping itself: one node's row_version
# names another version (a lost apply would); verify names it.
sq($c, q{UPDATE replstamp.row_version SET serial = serial + 1000000
          WHERE relation = 'public.u' AND pk = '{"k": "k1", "n": 50}'});
sq($c, q{SELECT replstamp.rebuild_digests('u')});
is(verify($a, 'c', q{, tables => ARRAY['u'::regclass]}), 'public.u|{"k": "k1", "n": 50}|other version',
	'another version of a row is named');
sq($c, q{DELETE FROM replstamp.row_version WHERE relation = 'public.u' AND pk = '{"k": "k2", "n": 51}'});
sq($c, q{SELECT replstamp.rebuild_digests('u')});
is(verify($c, 'a', q{, tables => ARRAY['u'::regclass]}),
	qq{public.u|{"k": "k2", "n": 51}|missing here\npublic.u|{"k": "k1", "n": 50}|other version},
	'a row missing here is named');

# 6. Only superusers, or whom they grant it, may verify and repair.
sq($a, 'CREATE ROLE mallory LOGIN');
my ($rc, $out, $err) = $a->psql('postgres', q{SET ROLE mallory; SELECT * FROM replstamp.repair('b', 't')});
like($err, qr/permission denied for function repair/, 'an ordinary user cannot repair');
($rc, $out, $err) = $a->psql('postgres', q{SET ROLE mallory; SELECT * FROM replstamp.verify('b')});
like($err, qr/permission denied for function verify/, 'nor verify');
($rc, $out, $err) = $a->psql('postgres', q{SET ROLE mallory; SELECT replstamp.verify_rows('{}')});
like($err, qr/permission denied for function verify_rows/, 'nor ask for rows as a peer would');

done_testing();
