# Upgrading from release 1.0 as users do it, one node at a time: nodes
# installed and replicating with the 1.0 binaries; the binaries replaced
# (same data directories), where stamping goes on and replication refuses
# until ALTER EXTENSION replstamp UPDATE; a mixed cluster during the
# rolling upgrade refusing both ways, with a hint (1.0 applies pages, not
# whole transactions), and losing nothing: once both are updated every
# change made meanwhile arrives; afterwards the old stamps intact,
# last writer wins against versions written before the upgrade, a restore
# that still rotates, and a catalog equal to a fresh 1.1 install's.
#
# test/run builds release 1.0 (commit 76eb008, from the git history) next
# to the current tree and names both installations in REPLSTAMP_INSTALL_1_0
# and REPLSTAMP_INSTALL.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use ReplstampTest;
require_programs('pg_basebackup', 'pg_dump');

my $old = $ENV{REPLSTAMP_INSTALL_1_0};
plan skip_all => 'release 1.0 is not installed: run test/run from a git checkout, '
  . 'or set REPLSTAMP_INSTALL_1_0 to an installation of it'
  unless $old;
my $new = $ENV{REPLSTAMP_INSTALL};    # undef: the binaries on the PATH

sub sq { my ($n, $sql) = @_; return $n->safe_psql('postgres', $sql); }
# The output, or the error of a statement expected to work: a failure
# fails one check instead of ending the test.
sub try_sq
{
	my ($n, $sql) = @_;
	my ($rc, $out, $err) = $n->psql('postgres', $sql);
	return $rc == 0 ? $out : $err;
}
sub id_of { my ($n) = @_; return sq($n, 'SELECT replica_id FROM replstamp.node'); }
# The version ALTER EXTENSION UPDATE goes to: default_version of the
# control file of the build under test.
my $new_version = do {
	my ($v) = grep { /^default_version/ } do { open(my $f, '<', 'replstamp.control') or die $!; <$f> };
	$v =~ /'([^']+)'/ ? $1 : die 'no default_version in replstamp.control';
};
sub version_of { my ($n) = @_; return sq($n, "SELECT extversion FROM pg_extension WHERE extname = 'replstamp'"); }
sub content
{
	my ($n) = @_;
	return sq($n, q{SELECT string_agg(format('%s:%s:%s', id, balance, note), ',' ORDER BY id) FROM accounts})
	  . ' | '
	  . sq($n, q{SELECT string_agg(format('%s/%s:%s:%s:%s:%s', order_id, line, amount, at, encode(data, 'hex'), tags), ','
			ORDER BY order_id, line) FROM "Shop"."Order Lines"});
}
# Every stamp this node held before its upgrade, unchanged: same replica
# ID, serial, table, operation, key, row image, time and origin.
sub stamps_intact
{
	my ($n) = @_;
	return sq($n, q{SELECT count(*) FROM before_upgrade b
		LEFT JOIN replstamp.changes c USING (replica_id, serial)
		WHERE c.serial IS NULL
		   OR (c.relation, c.op, c.pk::text, c.row_image::text, c.changed_at, c.applied)
		      IS DISTINCT FROM (b.relation, b.op, b.pk::text, b.row_image::text, b.changed_at, b.applied)});
}
# $n refuses to sync from $peer, clearly.
sub sync_refused
{
	my ($n, $peer, $name) = @_;
	my ($rc, $out, $err) = $n->psql('postgres', "SELECT replstamp.sync('$peer')");
	like($err, qr/replstamp\.sync\(\) needs replstamp 1\.1, but this database still has the catalog of replstamp 1\.0.*HINT:  Run ALTER EXTENSION replstamp UPDATE in this database\./s,
		$name);
}
# Replace the binaries of $n: stop, start from the installation $install.
sub replace_binaries
{
	my ($n, $install) = @_;
	$n->stop;
	use_install($n, $install);
	start_verified($n, sub { $n->start });
}

# 1. Release 1.0: two nodes replicating.  Automatic pruning is off so that
# every stamp can be compared (1.0 ignores the setting).
my $setup = q{
	CREATE EXTENSION replstamp;
	CREATE TABLE accounts (id int PRIMARY KEY, balance int, note text);
	SELECT replstamp.track('accounts');
	CREATE SCHEMA "Shop";
	CREATE TABLE "Shop"."Order Lines" (order_id int, line int, amount numeric(12,2),
		at timestamptz, data bytea, tags text[], PRIMARY KEY (order_id, line));
	SELECT replstamp.track('"Shop"."Order Lines"');
};
# Tables that leave under 1.0: their changes stay in the log.
my $leaving = q{
	CREATE TABLE scratch (id int PRIMARY KEY);
	SELECT replstamp.track('scratch');
	CREATE TABLE notes (id int PRIMARY KEY, body text);
	SELECT replstamp.track('notes');
};
my @conf = ('replstamp.prune_interval = 0');
my $a = replstamp_node('a', install => $old, conf => \@conf, init => { allows_streaming => 1 },
	sql => $setup . $leaving);
my $b = replstamp_node('b', install => $old, conf => \@conf, sql => $setup . $leaving);
add_peer($a, 'b', $b);
add_peer($b, 'a', $a);
is(version_of($a), '1.0', 'release 1.0 installed');

sq($a, "INSERT INTO accounts SELECT g, 0, 'a' FROM generate_series(1, 10) g");
sq($a, "UPDATE accounts SET balance = 1 WHERE id = 2");
sq($a, q{INSERT INTO "Shop"."Order Lines" VALUES
	(1, 1, 12.50, '2026-01-02 03:04:05.678+01', '\x00ff', '{a,"b c"}'),
	(1, 2, -0.01, 'infinity', '', '{}')});
sq($b, "INSERT INTO accounts SELECT g, 0, 'b' FROM generate_series(11, 20) g");
sq($b, "DELETE FROM accounts WHERE id = 15");
sq($b, "UPDATE accounts SET id = 21 WHERE id = 14");    # a key change
sq($a, "INSERT INTO scratch VALUES (1), (2); INSERT INTO notes VALUES (1, 'note')");
is(sq($a, "SELECT replstamp.sync('b')"), '12', '1.0: a pulls from b');
is(sq($b, "SELECT replstamp.sync('a')"), '16', '1.0: b pulls from a');
sq($_, "DROP TABLE scratch; SELECT replstamp.untrack('notes')") for ($a, $b);
# Conflicting changes, not synced before the upgrade: the later one must
# win on both nodes, against versions written by 1.0.
sq($b, "UPDATE accounts SET note = 'b, earlier' WHERE id = 3");
sq($a, "UPDATE accounts SET note = 'a, later' WHERE id = 3");
sq($a, "UPDATE accounts SET note = 'a, earlier' WHERE id = 4");
sq($b, "UPDATE accounts SET note = 'b, later' WHERE id = 4");

my $id_a = id_of($a);
my $id_b = id_of($b);
sq($a, "SELECT replstamp.prepare_backup('taken with 1.0')");
$a->backup('v10');
sq($a, 'SELECT replstamp.finish_backup()');
for my $n ($a, $b)
{
	sq($n, 'CREATE TABLE before_upgrade AS SELECT replica_id, serial, relation, op, pk, row_image, changed_at, applied FROM replstamp.changes');
}
my $serial_a = sq($a, "SELECT max(serial) FROM replstamp.changes WHERE replica_id = '$id_a'");

# 2. a's binaries replaced; its catalog is still 1.0.
replace_binaries($a, $new);
ok($a->log_contains(qr/database "postgres" still has the catalog of replstamp 1\.0.*\n.*HINT:  Run ALTER EXTENSION replstamp UPDATE in that database/),
	'1.1 binaries, 1.0 catalog: the log says to run ALTER EXTENSION replstamp UPDATE');
is(version_of($a), '1.0', 'the catalog is still 1.0');
is(id_of($a), $id_a, 'a keeps its replica ID across the new binaries');
is(sq($a, 'SELECT count(*) FROM replstamp.replica_history'), '1', 'and does not rotate');
sq($a, "INSERT INTO accounts VALUES (30, 0, 'a on 1.1 binaries')");
sq($a, "UPDATE accounts SET balance = 30 WHERE id = 30");
sq($a, "DELETE FROM accounts WHERE id = 10");
is(sq($a, "SELECT string_agg(format('%s/%s', replica_id = '$id_a', serial - $serial_a), ',' ORDER BY serial)
		FROM replstamp.changes WHERE serial > $serial_a AND replica_id = '$id_a'"),
	't/1,t/2,t/3', 'stamping goes on before the update: same replica ID, the next serials');
# Each new session checks the identity once (the 1.0 catalog has no place
# to record this start's check): the check must neither wait for another
# writer's open transaction nor need a writable one.
my $open = $a->background_psql('postgres');
$open->query_safe("BEGIN; INSERT INTO accounts VALUES (34, 0, 'open transaction')");
is(try_sq($a, "SET lock_timeout = '10s'; INSERT INTO accounts VALUES (35, 0, 'another session') RETURNING id"), '35',
	'a new session stamps while another session\'s transaction is open');
$open->query_safe('COMMIT');
$open->quit;
sync_refused($a, 'b', 'replication refuses before the update, and says to run ALTER EXTENSION replstamp UPDATE');
sq($a, 'SELECT replstamp.sync_all()');
like(sq($a, "SELECT last_error FROM replstamp.peers WHERE name = 'b'"), qr/needs replstamp 1\.1/,
	'sync_all records the refusal in replstamp.peers');
like(try_sq($b, "SELECT replstamp.sync('a')"), qr/a node running replstamp 1\.0 cannot pull from this node, which runs replstamp 1\.2.*HINT:  Update replstamp on the pulling node/s,
	'a 1.0 node cannot pull from it: it would apply transactions split');
is(stamps_intact($a), '0', 'every stamp a held is intact');
# A backup of the live node: the 1.0 catalog cannot record that this
# start's identity check is done, and the sessions that start during the
# backup must not take the node for a restored copy.
sq($a, "SELECT replstamp.prepare_backup('nightly')");
is(sq($a, 'SELECT state FROM replstamp.node'), 'backup', 'the live node is marked for a backup');
sq($a, "INSERT INTO accounts VALUES (36, 0, 'during the backup')");
sq($a, 'SELECT replstamp.finish_backup()');
is(sq($a, "SELECT state || ' ' || replica_id FROM replstamp.node") . ' '
	  . sq($a, "SELECT replica_id FROM replstamp.changes WHERE pk->>'id' = '36'"),
	"original $id_a $id_a", 'it keeps its replica ID through its backup, and stamps with it');

# A backup taken with 1.0, restored on the new binaries before the update.
my $r = PostgreSQL::Test::Cluster->new('r', $new ? (install_path => $new) : ());
$r->init_from_backup($a, 'v10');
start_verified($r, sub { $r->start });
my $id_r = id_of($r);
isnt($id_r, $id_a, 'a backup taken with 1.0 and restored on the new binaries takes a new replica ID');
sq($r, "INSERT INTO accounts VALUES (60, 0, 'restored')");
is(sq($r, "SELECT replica_id FROM replstamp.changes WHERE pk->>'id' = '60'"), $id_r, 'and stamps with it');
sq($r, 'ALTER EXTENSION replstamp UPDATE');
is(id_of($r) . ' ' . sq($r, 'SELECT count(*) FROM replstamp.replica_history'), "$id_r 2",
	'it keeps that ID through the update');
$r->stop;

# 3. ALTER EXTENSION replstamp UPDATE on a.
sq($a, 'ALTER EXTENSION replstamp UPDATE');
is(version_of($a), $new_version, "a is on $new_version");
is(id_of($a), $id_a, 'a keeps its replica ID through the update');
is(sq($a, 'SELECT count(*) FROM replstamp.replica_history'), '1', 'the update does not rotate');
is(stamps_intact($a), '0', 'the update keeps every stamp as it was');
is(sq($a, 'SELECT string_agg(relation, \',\' ORDER BY relation) FROM replstamp.tracked WHERE state = \'tracked\''),
	'"Shop"."Order Lines",public.accounts', 'the tracked tables are registered');
is(sq($a, "SELECT string_agg(relation || ':' || state, ',' ORDER BY relation) FROM replstamp.tracked WHERE state <> 'tracked'"),
	'public.notes:untracked,public.scratch:dropped', 'so are the tables that left, whose changes are in the log');
is(sq($a, 'SELECT tracked_tables || \'/\' || tracked_tables_not_stamped FROM replstamp.status'), '2/0',
	'replstamp.status sees them stamped');
# row_version: per row, the latest change of the 1.0 log.
is(sq($a, q{SELECT string_agg(format('%s:%s:%s', pk->>'id', deleted,
		(replica_id, serial) = (SELECT c.replica_id, c.serial FROM replstamp.changes c
		  WHERE c.relation = v.relation AND (c.pk = v.pk OR c.row_image @> v.pk)
		  ORDER BY c.changed_at DESC LIMIT 1)), ',' ORDER BY (pk->>'id')::int)
		FROM replstamp.row_version v WHERE relation = 'public.accounts' AND (pk->>'id')::int IN (2, 3, 10, 14, 15, 21)}),
	'2:f:t,3:f:t,10:t:t,14:t:t,15:t:t,21:f:t',
	'row_version holds the latest change of each row from the old log: updates, deletes, a key change');
is(sq($a, q{SELECT count(*) FILTER (WHERE NOT deleted) || '/' || count(*) FILTER (WHERE deleted) FROM replstamp.row_version
		WHERE relation IN ('public.accounts', '"Shop"."Order Lines"')}),
	sq($a, q{SELECT (SELECT count(*) FROM accounts) + (SELECT count(*) FROM "Shop"."Order Lines")}) . '/3',
	'row_version has one row per row, and one per deleted row');

# 4. Mixed cluster: a on 1.1, b still on 1.0 (binaries and catalog).
sq($a, "INSERT INTO accounts VALUES (31, 0, 'a on 1.1')");
sq($b, "INSERT INTO accounts VALUES (32, 0, 'b on 1.0')");
sq($a, q{UPDATE "Shop"."Order Lines" SET amount = amount + 1, tags = tags || '{"d\"e"}' WHERE line = 1});
like(try_sq($a, "SELECT replstamp.sync('b')"), qr/peer "b" runs replstamp 1\.0, this node 1\.2.*HINT:  Update replstamp on the peer/s,
	'mixed: a (1.2) refuses to pull from b (1.0), with a hint');
is(sq($a, "SELECT status FROM replstamp.peers WHERE name = 'b'"), 'failing', 'replstamp.peers shows it failing');
like(try_sq($b, "SELECT replstamp.sync('a')"), qr/cannot pull from this node, which runs replstamp 1\.2/,
	'mixed: b (1.0) cannot pull from a (1.2)');

# Conflicts for b to settle after its update, against its 1.0 log.
sq($a, "UPDATE accounts SET note = 'a, earlier' WHERE id = 8");
sq($b, "UPDATE accounts SET note = 'b, later' WHERE id = 8");
sq($b, "UPDATE accounts SET note = 'b, earlier' WHERE id = 9");
sq($a, "UPDATE accounts SET note = 'a, later' WHERE id = 9");

# 5. b's binaries replaced, catalog still 1.0.
replace_binaries($b, $new);
is(id_of($b), $id_b, 'b keeps its replica ID across the new binaries');
sq($b, "INSERT INTO accounts VALUES (33, 0, 'b on 1.1 binaries')");
is(sq($b, "SELECT replica_id = '$id_b' FROM replstamp.changes WHERE pk->>'id' = '33'"), 't', 'b stamps before its update');
sync_refused($b, 'a', 'b refuses to pull before its update');
like(try_sq($a, "SELECT replstamp.sync('b')"), qr/peer "b" runs replstamp 1\.0, this node 1\.2/,
	'a cannot pull from b before b\'s update either (its catalog has no serve())');
is(stamps_intact($b), '0', 'every stamp b held is intact');

# 6. ALTER EXTENSION replstamp UPDATE on b: both on 1.1.
my $log_a = -s $a->logfile;
my $log_b = -s $b->logfile;
# While a backup of b runs: the update must not take its mark for a restore.
sq($b, "SELECT replstamp.prepare_backup('during the update')");
sq($b, 'ALTER EXTENSION replstamp UPDATE');
sq($b, 'SELECT replstamp.finish_backup()');
is(id_of($b), $id_b, 'b keeps its replica ID through an update run during its backup');
is(stamps_intact($b), '0', 'b\'s update keeps every stamp as it was');
is(try_sq($a, "SELECT replstamp.sync('b')"), '6', 'both updated: a pulls every change b made during the upgrade');
is(try_sq($b, "SELECT replstamp.sync('a')"), '12', 'and b every change a made');
is(sq($a, "SELECT replstamp.sync('b')"), '0', 'a pulls from b again: nothing new');
is(sq($a, "SELECT protocol || ':' || status FROM replstamp.peer WHERE name = 'b'")
	  . ',' . sq($b, "SELECT protocol || ':' || status FROM replstamp.peer WHERE name = 'a'"),
	'3:ok,3:ok', 'both speak protocol 3 now');
is(content($a), content($b), 'a and b hold the same rows');
is(sq($a, 'SELECT note FROM accounts WHERE id = 3') . ',' . sq($a, 'SELECT note FROM accounts WHERE id = 4'),
	'a, later,b, later', 'last writer wins on a against versions written by 1.0');
is(sq($a, "SELECT string_agg(kind || ':' || (loser_replica_id = '$id_b'), ',' ORDER BY id) FROM replstamp.conflicts WHERE pk->>'id' = '3'"),
	'incoming_lost:true', 'the earlier change from b lost, and is logged');
is(sq($b, 'SELECT note FROM accounts WHERE id = 8') . ',' . sq($b, 'SELECT note FROM accounts WHERE id = 9'),
	'b, later,a, later', 'last writer wins on b against versions written by 1.0');
sq($a, "INSERT INTO accounts VALUES (40, 0, 'a after'); UPDATE accounts SET balance = 40 WHERE id = 1");
sq($b, "INSERT INTO accounts VALUES (41, 0, 'b after'); DELETE FROM accounts WHERE id = 11");
is(sq($a, "SELECT replstamp.sync('b')"), '2', 'new changes replicate from b');
is(sq($b, "SELECT replstamp.sync('a')"), '2', 'new changes replicate from a');
is(content($a), content($b), 'a and b hold the same rows');
is(sq($a, 'SELECT count(*) FROM accounts'), '26', 'all of them');
my $versions = q{SELECT string_agg(format('%s %s %s/%s %s %s', relation, pk, replica_id, serial, changed_at, deleted), E'\n'
	ORDER BY relation, pk::text) FROM replstamp.row_version};
is(sq($a, $versions), sq($b, $versions), 'a and b hold the same latest version of every row');
is(sq($a, "SELECT count(*) FROM replstamp.changes WHERE replica_id NOT IN ('$id_a', '$id_b')"), '0',
	'no replica ID was minted on the way');
ok(!$a->log_contains(qr/diverge|went back in time|parts from/, $log_a)
	  && !$b->log_contains(qr/diverge|went back in time|parts from/, $log_b),
	'neither node takes the other for diverged');

# 7. A restore after the upgrade still rotates.
sq($a, "SELECT replstamp.prepare_backup('after the upgrade')");
$a->backup('upgraded');
sq($a, 'SELECT replstamp.finish_backup()');
my $c = PostgreSQL::Test::Cluster->new('c', $new ? (install_path => $new) : ());
$c->init_from_backup($a, 'upgraded');
start_verified($c, sub { $c->start });
my $id_c = id_of($c);
isnt($id_c, $id_a, 'a copy restored after the upgrade takes a new replica ID');
like(sq($c, "SELECT retired_reason FROM replstamp.replica_history WHERE replica_id = '$id_a'"),
	qr/restored from backup "after the upgrade"/, 'and says why');
sq($c, "INSERT INTO accounts VALUES (50, 0, 'restored copy')");
add_peer($b, 'c', $c);
is(sq($b, "SELECT replstamp.sync('c')"), '1', 'its new change replicates');
is(sq($b, "SELECT replica_id FROM replstamp.changes WHERE pk->>'id' = '50'"), $id_c, 'under its new ID');

# 8. A node that joins after the upgrade, with a fresh install of 1.1,
# gets every row; its catalog is the same as 1.0 updated to 1.1.
my $d = replstamp_node('d', $new ? (install => $new) : (), sql => $setup);
add_peer($d, 'a', $a);
add_peer($d, 'b', $b);
sq($d, 'SELECT replstamp.sync_all()');
is(sq($d, "SELECT string_agg(coalesce(last_error, 'ok'), ',' ORDER BY name) FROM replstamp.peers"), 'ok,ok',
	'a node that joins after the upgrade is not stopped by changes of tables dropped or untracked under 1.0');
is(content($d), content($b), 'it holds the same rows');
sub catalog_of
{
	my ($n) = @_;
	my $dump = $n->safe_psql('postgres', '\dx+ replstamp');
	my ($stdout, $stderr);
	$n->run_log([ $n->installed_command('pg_dump'), '--binary-upgrade', '--schema-only',
		'--exclude-schema', 'public', '--exclude-schema', '"Shop"', '--dbname', $n->connstr('postgres') ],
		'>', \$stdout, '2>', \$stderr) or die "pg_dump failed: $stderr";
	# What differs between any two databases: OIDs, transaction IDs,
	# sequence positions, pg_dump's random key, comments.
	$stdout =~ s/^SELECT pg_catalog\.binary_upgrade_.*\n//mg;
	$stdout =~ s/^UPDATE pg_catalog\.pg_class\nSET relfrozenxid = .*\nWHERE oid = .*\n//mg;
	$stdout =~ s/^SELECT pg_catalog\.setval\(.*\n//mg;
	$stdout =~ s/^\\(un)?restrict .*\n//mg;
	$stdout =~ s/^--.*\n//mg;
	$stdout =~ s/\n{2,}/\n/g;
	return $dump . "\n" . $stdout . "\n"
	  . sq($n, "SELECT extconfig::regclass[]::text || ' ' || extcondition::text FROM pg_extension WHERE extname = 'replstamp'");
}
my $fresh = catalog_of($d);
my $updated = catalog_of($a);
like($fresh, qr/CREATE TABLE replstamp\.row_version/, 'the catalog as pg_dump --binary-upgrade sees it');
is($updated, $fresh, 'a fresh 1.1 install and 1.0 updated to 1.1 have the same catalog');

$_->stop for ($a, $b, $c, $d);
done_testing();
