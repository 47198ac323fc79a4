# A rolling upgrade from release 1.1, with the real 1.1 binaries (issue
# 21, item 6): 1.2 applies remote transactions whole and in order, which
# needs the transaction markers only a 1.2 node sends, so during the
# upgrade a 1.1 node and a 1.2 node refuse each other both ways, with a
# hint, and apply nothing (never a silent weaker guarantee); every change
# made meanwhile arrives once both run 1.2, each transaction whole, the
# replica IDs unchanged.
#
# test/run builds release 1.1 (from the git history) next to the current
# tree and names it in REPLSTAMP_INSTALL_1_1.
#
# Copyright (c) 2026, the replstamp authors
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use ReplstampTest;

my $old = $ENV{REPLSTAMP_INSTALL_1_1};
plan skip_all => 'release 1.1 is not installed: run test/run from a git checkout, '
  . 'or set REPLSTAMP_INSTALL_1_1 to an installation of it'
  unless $old;
my $new = $ENV{REPLSTAMP_INSTALL};    # undef: the binaries on the PATH

sub sq { my ($n, $sql) = @_; return $n->safe_psql('postgres', $sql); }
sub version_of { my ($n) = @_; return sq($n, "SELECT extversion FROM pg_extension WHERE extname = 'replstamp'"); }
sub id_of { my ($n) = @_; return sq($n, 'SELECT replica_id FROM replstamp.node'); }
sub pull
{
	my ($n, $peer) = @_;
	my ($rc, $out, $err) = $n->psql('postgres', "SELECT replstamp.sync('$peer')");
	return $rc == 0 ? '' : $err;
}
sub state_of
{
	my ($n) = @_;
	return sq($n, q{SELECT count(*) || ' ' || sum(balance) || ' ' || md5(string_agg(id || ':' || balance, ',' ORDER BY id)) FROM accounts});
}
sub replace_binaries
{
	my ($n, $install) = @_;
	$n->stop;
	use_install($n, $install);
	start_verified($n, sub { $n->start });
}

# 1. Release 1.1: two nodes replicating, 3,000 accounts of 100 each.
my $setup = q{
	CREATE EXTENSION replstamp;
	CREATE TABLE accounts (id int PRIMARY KEY, balance int);
	SELECT replstamp.track('accounts');
};
my @conf = ('replstamp.prune_interval = 0');
my $a = replstamp_node('a', install => $old, conf => \@conf, sql => $setup);
my $b = replstamp_node('b', install => $old, conf => \@conf, sql => $setup);
add_peer($a, 'b', $b);
add_peer($b, 'a', $a);
is(version_of($a) . ' ' . version_of($b), '1.1 1.1', 'release 1.1 installed on both nodes');
sq($a, 'INSERT INTO accounts SELECT g, 100 FROM generate_series(1, 3000) g');
is(pull($b, 'a'), '', '1.1: b pulls from a');
is(state_of($b), state_of($a), '1.1: both hold the same accounts');
my ($id_a, $id_b) = (id_of($a), id_of($b));

# 2. b runs 1.2.
replace_binaries($b, $new);
# The 1.1 catalog cannot record a TRUNCATE: the 1.2 library refuses it.
my ($ret, $out, $err) = $b->psql('postgres', 'TRUNCATE accounts');
like($err, qr/ERROR:  cannot truncate table "accounts" because it is tracked by replstamp\nDETAIL:  This database still has the catalog of replstamp 1\.1, which cannot record a TRUNCATE\.\nHINT:  Run ALTER EXTENSION replstamp UPDATE, or use DELETE\./,
	'the 1.2 library on the 1.1 catalog refuses TRUNCATE of a tracked table, with a hint');
sq($b, 'ALTER EXTENSION replstamp UPDATE');
is(version_of($b), '1.2', 'b is updated to 1.2');
is(id_of($b), $id_b, 'b keeps its replica ID');

# Meanwhile a (1.1) moves 1 from each of the first 1,500 accounts to the
# last 1,500 in one transaction, and b (1.2) writes too.
sq($a, 'UPDATE accounts SET balance = balance + CASE WHEN id <= 1500 THEN -1 ELSE 1 END');
sq($b, 'UPDATE accounts SET balance = balance - 5 WHERE id = 1; UPDATE accounts SET balance = balance + 5 WHERE id = 3000');
my $b_before = state_of($b);

# The 1.1 node's serve() refuses the protocol-3 request before the 1.2
# node sees the 1.1 handshake (which it would refuse too: test 047).
like(pull($b, 'a'), qr/ERROR:  node "b\/postgres" speaks sync protocol 3, this node 2\nHINT:  Run the same version of replstamp on every node\.\nCONTEXT:  on peer "a"/,
	'pulling from the 1.1 node fails: it refuses the 1.2 request, with a hint');
is(state_of($b), $b_before, 'and applies nothing of it');
is(sq($b, q{SELECT status || ' ' || last_error_sqlstate FROM replstamp.peers WHERE name = 'a'}), 'failing 0A000',
	'replstamp.peers on b shows a failing, SQLSTATE 0A000');
my $a_before = state_of($a);
like(pull($a, 'b'), qr/runs replstamp 1\.1 \(sync protocol 2\), this node 1\.2 \(protocol 3\).*Update replstamp on that node/s,
	'the 1.1 node is refused by the 1.2 node it pulls from, with a hint');
is(state_of($a), $a_before, 'and applies nothing of it');

# 3. a runs 1.2: everything made meanwhile arrives, both ways.
replace_binaries($a, $new);
sq($a, 'ALTER EXTENSION replstamp UPDATE');
is(version_of($a), '1.2', 'a is updated to 1.2');
is(id_of($a), $id_a, 'a keeps its replica ID');
for (1 .. 2) { is(pull($b, 'a'), '', 'b pulls from a'); is(pull($a, 'b'), '', 'a pulls from b'); }
is(state_of($b), state_of($a), 'both hold the same accounts');
is(sq($a, 'SELECT sum(balance) FROM accounts'), '300000', 'the sum is kept');
is(sq($a, 'SELECT balance FROM accounts WHERE id = 1') . ' ' . sq($a, 'SELECT balance FROM accounts WHERE id = 3000'),
	'95 105', 'both transactions are applied; on the two rows both wrote, b\'s later write wins');
is(sq($_, q{SELECT string_agg(status, ',') FROM replstamp.peers}), 'ok', $_->name . ': its peer shows ok') for ($a, $b);

# A 1.1 change (no transaction marker) and a 1.2 transaction after it:
# a transaction of 1.2 changes on a reaches b whole.
sq($a, 'UPDATE accounts SET balance = balance + CASE WHEN id <= 1500 THEN -1 ELSE 1 END');
is(pull($b, 'a'), '', 'b pulls a 1.2 transaction of a');
is(sq($b, 'SELECT sum(balance) FROM accounts') . ' ' . sq($b, 'SELECT count(*) FROM accounts WHERE id <= 1500 AND balance <> 98 AND id <> 1'),
	'300000 0', 'b holds it whole');
is(state_of($b), state_of($a), 'and the same accounts as a');

# Both updated: a TRUNCATE replicates.
sq($a, 'TRUNCATE accounts');
is(pull($b, 'a'), '', 'b pulls a TRUNCATE of a');
is(sq($b, 'SELECT count(*) FROM accounts'), '0', 'and empties the table as a did');

$_->stop for ($a, $b);
done_testing();
