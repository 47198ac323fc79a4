# An error while a page of pulled changes is applied, of any class, never
# loses a change: the page is rolled back whole, the transactions committed
# before it stay, and the vector does not move past the change; a transient error (deadlock, serialization
# failure, unique violation) is retried up to three times; anything else,
# and a transient error that persists, stops the sync from that peer at
# that change with replstamp.peers showing 'failing', the SQLSTATE and the
# change (stamp and table, no values), until the cause is gone or
# replstamp.skip() is called on that stamp.
#
# Before this was fixed, a page that failed was dropped without a word
# (a "continue" in the PG_CATCH of the page apply) and the next page moved
# the vector past it: committed changes lost for good while every peer
# showed 'ok'.  Three nodes, the sync workers running.
#
# Copyright (c) 2026, the replstamp authors
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use ReplstampTest;

# users: a second unique key.  inject(): on a node whose table fault names
# a key, the apply's write of that key raises the fault's condition, as
# many times as the fault says (counted by a sequence, which a rolled-back
# page does not roll back).  'lock' waits for a table another session
# holds, under a short lock_timeout; 'cancel' cancels its own backend: both
# are the real errors PostgreSQL raises.  Local writes are never touched.
# (The apply runs triggers with search_path = pg_catalog, pg_temp.)
my $schema = q{
	CREATE EXTENSION replstamp;
	CREATE TABLE users (id int PRIMARY KEY, email text UNIQUE, note text);
	SELECT replstamp.track('users');
	CREATE TABLE fault (id int PRIMARY KEY, sqlstate text NOT NULL, times int NOT NULL);
	CREATE SEQUENCE fault_count;
	CREATE TABLE lockme (x int);
	CREATE FUNCTION inject() RETURNS trigger LANGUAGE plpgsql SET search_path = public AS $$
	DECLARE
		f fault;
	BEGIN
		IF current_setting('session_replication_role') <> 'replica' THEN
			RETURN NEW;
		END IF;
		SELECT * INTO f FROM fault WHERE id = NEW.id;
		IF FOUND AND nextval('fault_count') <= f.times THEN
			IF f.sqlstate = 'lock' THEN
				PERFORM set_config('lock_timeout', '50ms', true);
				LOCK TABLE lockme IN ACCESS EXCLUSIVE MODE;
			ELSIF f.sqlstate = 'cancel' THEN
				PERFORM pg_cancel_backend(pg_backend_pid());
				PERFORM pg_sleep(10);
			ELSE
				RAISE EXCEPTION 'injected fault' USING ERRCODE = f.sqlstate;
			END IF;
		END IF;
		RETURN NEW;
	END $$;
	CREATE TRIGGER inject BEFORE INSERT OR UPDATE ON users
		FOR EACH ROW EXECUTE FUNCTION inject();
	ALTER TABLE users ENABLE ALWAYS TRIGGER inject;
};
# A second unique key taken on two nodes is resolved by default (test 104);
# here the nodes stop at it instead, the user's choice, so that section 5
# shows a real constraint violation stopping a sync until skip().
my @nodes = map {
	replstamp_node($_,
		conf => [ 'replstamp.sync_interval = 1', 'replstamp.sync_batch_size = 100',
			'replstamp.on_constraint_conflict = stop' ],
		sql => $schema)
} qw(a b c);
my ($a, $b, $c) = @nodes;
add_mesh(@nodes);
sub sq { my ($node, $sql) = @_; return $node->safe_psql('postgres', $sql); }

my $id_b = sq($b, 'SELECT replica_id FROM replstamp.node');
# The stamp b gave its latest change of key $k.
sub stamp_of
{
	my ($k) = @_;
	return sq($b,
		"SELECT replica_id || '/' || serial FROM replstamp.changes WHERE pk->>'id' = '$k' ORDER BY serial DESC LIMIT 1");
}
sub peer_row
{
	my ($node, $peer) = @_;
	return sq($node,
		"SELECT status || ' ' || coalesce(last_error_sqlstate, '-') || ' ' || coalesce(last_error_change, '-') "
		  . "FROM replstamp.peers WHERE name = '$peer'");
}
# Rows of b's keys $lo..$hi on $node.
sub rows_in
{
	my ($node, $lo, $hi) = @_;
	return sq($node, "SELECT count(*) FROM users WHERE id BETWEEN $lo AND $hi");
}
sub vector_of_b
{
	my ($node) = @_;
	return sq($node, "SELECT coalesce(max(serial), 0) FROM replstamp.vector WHERE replica_id = '$id_b'");
}

# One fault: b writes keys $k-150..$k-1 in three transactions of 50, then
# $k..$k+150 in one (whole transactions: a page on a ends only between
# two); a's apply of key $k meets the fault $times times.
sub inject_on_a
{
	my ($k, $sqlstate, $times) = @_;
	sq($a, "SELECT setval('fault_count', 1, false); INSERT INTO fault VALUES ($k, '$sqlstate', $times)");
	sq($b, join(';', map { "INSERT INTO users SELECT g, 'u' || g || '\@x', 'from b' FROM generate_series($_, $_ + 49) g" }
		  ($k - 150, $k - 100, $k - 50)));
	sq($b, "INSERT INTO users SELECT g, 'u' || g || '\@x', 'from b' FROM generate_series($k, $k + 150) g");
	return;
}

# A fault that goes away by itself within the retries: the page is applied
# on a later try, every row arrives, the peer shows 'ok'.
sub case_retried
{
	my ($k, $sqlstate, $what) = @_;
	my $offset = -s $a->logfile;
	inject_on_a($k, $sqlstate, 2);
	ok($a->poll_query_until('postgres', "SELECT count(*) = 301 FROM users WHERE id BETWEEN $k - 150 AND $k + 150"),
		"$what twice: the page is tried again and every change arrives");
	ok($a->wait_for_log(qr/retrying a page from peer "(b|c)" \(attempt 3 of 3\) after: injected fault/, $offset),
		"$what: the retries are logged");
	is(sq($a, 'SELECT last_value FROM fault_count'), '3', "$what: the third try applied it");
	ok($a->poll_query_until('postgres', q{SELECT bool_and(status = 'ok') FROM replstamp.peers}),
		"$what: the peers show ok afterwards");
	sq($a, 'DELETE FROM fault');
	return;
}

# A fault that stays: the sync from b stops at the change, nothing after it
# is applied however often the workers try, the change is named; once the
# cause is gone, the next sync goes on from there.
sub case_stops
{
	my ($k, $sqlstate, $shown, $what, $hold) = @_;
	inject_on_a($k, $sqlstate, 1_000_000);
	my $stamp = stamp_of($k);
	ok( $a->poll_query_until(
			'postgres', "SELECT status = 'failing' AND last_error_sqlstate = '$shown' "
			  . "FROM replstamp.peers WHERE name = 'b'"),
		"$what: the sync from b stops with status failing and SQLSTATE $shown");
	is(peer_row($a, 'b'), "failing $shown $stamp", "$what: replstamp.peers names the change that failed");
	like(sq($a, q{SELECT last_error FROM replstamp.peers WHERE name = 'b'}),
		qr/\(applying change \Q$stamp\E \(INSERT\) of table public\.users from peer "b"\)$/,
		"$what: last_error names the stamp and the table");
	# Let the workers try again, twice: still nothing past the change.
	my $at = sq($a, q{SELECT last_error_at FROM replstamp.peers WHERE name = 'b'});
	for (1 .. 2)
	{
		$a->poll_query_until('postgres',
			"SELECT last_error_at > '$at' FROM replstamp.peers WHERE name = 'b'")
		  or die 'the sync workers stopped trying';
		$at = sq($a, q{SELECT last_error_at FROM replstamp.peers WHERE name = 'b'});
	}
	is(peer_row($a, 'b'), "failing $shown $stamp", "$what: still failing at the same change after more syncs");
	is(rows_in($a, $k, $k + 150), '0', "$what: nothing from the failing change on is applied");
	my $serial = (split m{/}, $stamp)[1];
	my $vec = vector_of_b($a);
	cmp_ok($vec, '<', $serial, "$what: the vector stays below the change ($vec < $serial)");
	is(rows_in($a, $k - 150, $k - 1), '150', "$what: a holds the whole transactions before it");
	$hold->() if $hold;
	sq($a, 'DELETE FROM fault');
	ok($a->poll_query_until('postgres', "SELECT count(*) = 301 FROM users WHERE id BETWEEN $k - 150 AND $k + 150"),
		"$what: once the cause is gone, the sync goes on from the change and every row arrives");
	ok($a->poll_query_until('postgres', q{SELECT status = 'ok' FROM replstamp.peers WHERE name = 'b'}),
		"$what: and the peer shows ok again");
	return;
}

# 1. Transient errors that pass.
case_retried(1000, '40P01', 'a deadlock');
case_retried(2000, '40001', 'a serialization failure');

# 2. A transient error that persists: three tries, then it stops.
my $offset = -s $a->logfile;
case_stops(3000, '40001', '40001', 'a serialization failure that persists');
ok($a->log_contains(qr/retrying a page from peer "b" \(attempt 3 of 3\)/, $offset),
	'a persisting transient error was tried three times before the sync stopped');

# 3. Errors that are not transient stop the sync at the first try: a real
# lock timeout, a real cancel, a full disk (simulated).
my $locker = $a->background_psql('postgres');
$locker->query_safe('BEGIN; LOCK TABLE lockme IN ACCESS EXCLUSIVE MODE');
case_stops(4000, 'lock', '55P03', 'a lock timeout', sub { $locker->query_safe('COMMIT'); });
$locker->quit;
case_stops(5000, 'cancel', '57014', 'a statement cancel');
case_stops(6000, '53100', '53100', 'a full disk');

# 4. A value of the row never reaches replstamp.peers: the error is raised
# with the row's e-mail address in its message.
sq($a, q{CREATE OR REPLACE FUNCTION leak() RETURNS trigger LANGUAGE plpgsql AS $$
	BEGIN
		IF current_setting('session_replication_role') = 'replica' AND NEW.id = 7000 THEN
			RAISE EXCEPTION 'bad address %', NEW.email USING ERRCODE = '22P02';
		END IF;
		RETURN NEW;
	END $$;
	CREATE TRIGGER leak BEFORE INSERT ON users FOR EACH ROW EXECUTE FUNCTION leak();
	ALTER TABLE users ENABLE ALWAYS TRIGGER leak});
sq($b, q{INSERT INTO users VALUES (7000, 'secret-7000@x', 'from b')});
ok($a->poll_query_until('postgres', q{SELECT status = 'failing' FROM replstamp.peers WHERE name = 'b'}),
	'an error quoting a value stops the sync');
my $shown = sq($a, q{SELECT last_error FROM replstamp.peers WHERE name = 'b'});
unlike($shown, qr/secret/, 'replstamp.peers does not show the value the error quoted');
like($shown, qr/^invalid_text_representation \(SQLSTATE 22P02\) \(applying change /,
	'it shows the condition and the change instead');
ok($a->log_contains(qr/bad address secret-7000/), 'the server log keeps the whole message');
sq($a, 'DROP TRIGGER leak ON users');
ok($a->poll_query_until('postgres', q{SELECT count(*) = 1 FROM users WHERE id = 7000}), 'then it goes on');

# The same with PostgreSQL's own error of another class: a regclass value
# naming a table only b has fails on a with 42P01, whose message quotes it.
$_->safe_psql('postgres', q{CREATE TABLE refs (id int PRIMARY KEY, r regclass); SELECT replstamp.track('refs')})
  for @nodes;
sq($b, q{CREATE TABLE secret_payroll_2027 (); INSERT INTO refs VALUES (1, 'secret_payroll_2027')});
ok( $a->poll_query_until(
		'postgres', q{SELECT last_error_sqlstate = '42P01' FROM replstamp.peers WHERE name = 'b'}),
	'a regclass naming a table a lacks stops the sync with 42P01');
$shown = sq($a, q{SELECT last_error FROM replstamp.peers WHERE name = 'b'});
unlike($shown, qr/secret_payroll/, 'replstamp.peers does not show the value a class-42 message quotes');
like($shown, qr/^undefined_table \(SQLSTATE 42P01\) \(applying change .* of table public\.refs from peer "b"\)$/,
	'it shows the condition, the change and the table');
$_->safe_psql('postgres', q{CREATE TABLE secret_payroll_2027 ()}) for ($a, $c);
ok($a->poll_query_until('postgres', q{SELECT count(*) = 1 FROM refs}), 'once the table exists, it goes on');

# 5. A second unique key taken on two nodes, with on_constraint_conflict =
# stop: a writes (1, 'q@x'), b writes (2, 'q@x') and then 2,500 more rows,
# before they sync.
$_->safe_psql('postgres', 'ALTER SYSTEM SET replstamp.sync_interval = 0; SELECT pg_reload_conf()')
  for @nodes;
# No sync may be under way while the two nodes write.
$_->poll_query_until('postgres',
	q{SELECT count(*) = 0 FROM pg_stat_activity WHERE query LIKE 'replstamp: syncing%'})
  for @nodes;
sq($a, q{INSERT INTO users VALUES (1, 'q@x', 'a')});
sq($b, q{INSERT INTO users VALUES (2, 'q@x', 'b')});
my $dup = stamp_of(2);
sq($b, q{INSERT INTO users SELECT g, 'v' || g || '@x', 'b' FROM generate_series(10001, 12500) g});
$_->safe_psql('postgres', 'ALTER SYSTEM SET replstamp.sync_interval = 1; SELECT pg_reload_conf()')
  for @nodes;
ok( $a->poll_query_until(
		'postgres', q{SELECT status = 'failing' AND last_error_sqlstate = '23505' FROM replstamp.peers WHERE name = 'b'}),
	'unique violation on a second key: the sync from b stops, failing');
is(peer_row($a, 'b'), "failing 23505 $dup", 'the change that takes the e-mail address again is named');
$shown = sq($a, q{SELECT last_error FROM replstamp.peers WHERE name = 'b'});
like($shown, qr/^duplicate key value violates unique constraint "users_email_key" \(SQLSTATE 23505\) \(applying change /,
	'last_error names the constraint, as PostgreSQL\'s message does');
unlike($shown, qr/q\@x/, 'but not the value (PostgreSQL puts it in the detail)');
is(rows_in($a, 10001, 12500), '0', 'none of the 2,500 later rows is applied over it, none is lost');
# b renames its duplicate: a still needs a decision about the change itself.
sq($b, q{UPDATE users SET email = 'q2@x' WHERE id = 2});
my $at = sq($a, q{SELECT last_error_at FROM replstamp.peers WHERE name = 'b'});
$a->poll_query_until('postgres', "SELECT last_error_at > '$at' FROM replstamp.peers WHERE name = 'b'")
  or die 'the sync workers stopped trying';
is(peer_row($a, 'b'), "failing 23505 $dup", 'a renamed duplicate later does not unstick it silently');
# skip() the named change wherever it stops a sync; everything else arrives.
my ($dup_id, $dup_serial) = split m{/}, $dup;
for my $n ($a, $c)
{
	$n->poll_query_until('postgres',
		"SELECT EXISTS (SELECT 1 FROM replstamp.changes WHERE replica_id = '$dup_id' AND serial = $dup_serial) "
		  . "OR EXISTS (SELECT 1 FROM replstamp.peers WHERE last_error_change = '$dup')")
	  or die 'neither held nor failing';
	sq($n, "SELECT replstamp.skip('$dup_id', $dup_serial)")
	  if sq($n, "SELECT count(*) FROM replstamp.peers WHERE last_error_change = '$dup'") ne '0';
}
my $want = sq($b, q{SELECT count(*) || ':' || md5(string_agg(u::text, ',' ORDER BY id)) FROM users u});
for my $n ($a, $c)
{
	ok( $n->poll_query_until(
			'postgres', q{SELECT count(*) || ':' || md5(string_agg(u::text, ',' ORDER BY id)) FROM users u}, $want),
		$n->name . ': after skip() of the named change, every row of b arrives (2,500 of 2,500) and the rows agree');
}
ok($a->poll_query_until('postgres', q{SELECT bool_and(status = 'ok') FROM replstamp.peers}),
	'every peer of a shows ok');
is(sq($a, "SELECT count(*) FROM replstamp.skipped WHERE replica_id = '$dup_id' AND serial = $dup_serial"),
	'1', 'the skipped change is listed in replstamp.skipped');

# inject() has SET search_path: its cached lookup once lived in a row's
# memory, and the apply of the next row crashed the sync worker.
ok(!$_->log_contains(qr/terminated by signal/), $_->name . ': no process crashed') for @nodes;

done_testing();
