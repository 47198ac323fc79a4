# Joining a mesh with one call, and leaving it (issue 24, item 5).
#  1. Three nodes a, b, c replicate in a mesh made by hand (add_peer).  A
#     fourth node d, from the schema only, runs replstamp.join() naming a:
#     a, b and c each get d as a peer and d gets each of them, with the
#     replication running by itself (the defaults): d ends with every row
#     and its writes reach every node.  replstamp.cluster on every node
#     lists the four, status ok.
#  2. join() again is a no-op; a fifth node under a name the mesh already
#     uses is refused, as is a node whose tracked table holds rows that
#     were never stamped, with nothing changed anywhere.
#  3. What a pulling credential can do: it cannot admit a node (no EXECUTE
#     on replstamp.admit()), and cannot read the connection strings.
#  4. d writes, then leaves at once: every member first pulls what it
#     lacks from d, then drops it; d drops its peers; the others keep d's
#     changes, and replstamp.cluster no longer lists d anywhere.
#  5. A node joins with a pulling role in my_conninfo: every link to and
#     from it uses that role, never mixed with the join's credential.
#  6. A member its sponsor knows by another name than its own is joined
#     once, under the sponsor's name for it.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use ReplstampTest;

sub sq { my ($n, $sql) = @_; return $n->safe_psql('postgres', $sql); }
sub content
{
	my ($n) = @_;
	return sq($n, q{SELECT coalesce(string_agg(id || ':' || v, ',' ORDER BY id), '') FROM t});
}
sub names
{
	my ($n, $where) = @_;
	$where //= 'true';
	return sq($n, "SELECT string_agg(name, ',' ORDER BY name) FROM replstamp.cluster WHERE $where");
}

my @nodes = map { replstamp_node($_, defaults => 1, sql => $TRACK_T) } qw(a b c);
my ($a, $b, $c) = @nodes;
add_mesh(@nodes);
sq($a, q{INSERT INTO t SELECT g, 'a' FROM generate_series(1, 50) g});
sq($b, q{INSERT INTO t SELECT g, 'b' FROM generate_series(51, 80) g});
sq($c, q{UPDATE t SET v = 'c' WHERE id BETWEEN 40 AND 60});
wait_converged(\@nodes, ['t'], 'the mesh of three before d joins');

# 1. d joins through a.
my $d = replstamp_node('d', defaults => 1, sql => $TRACK_T);
my $joined = sq($d, "SELECT node || ' ' || action FROM replstamp.join(\$\$" . $a->connstr('postgres') . "\$\$) ORDER BY 1");
is($joined, "a there: added; here: added\nb there: added; here: added\nc there: added; here: added",
	'join() through a adds d on a, b and c, and each of them on d');
is(sq($d, 'SELECT name FROM replstamp.mesh'), 'd', 'd is named after its cluster_name');
is(sq($_, q{SELECT count(*) FROM replstamp.peer WHERE name = 'd'}), '1', $_->name . ' has d as a peer')
  for @nodes;
is(sq($d, q{SELECT string_agg(name, ',' ORDER BY name) FROM replstamp.peer}), 'a,b,c', 'd has a, b and c as peers');
wait_converged([ @nodes, $d ], ['t'], 'once d joined');
is(content($d), content($a), 'd holds every row of the mesh');
sq($d, q{INSERT INTO t VALUES (1000, 'from d'); UPDATE t SET v = 'd' WHERE id = 1});
wait_converged([ @nodes, $d ], ['t'], "d's writes");
is(sq($_, 'SELECT v FROM t WHERE id = 1000'), 'from d', $_->name . " holds d's write") for @nodes;

# Every node sees the four, ok once each has pulled from the others and
# been pulled from.
for my $n (@nodes, $d)
{
	$n->poll_query_until('postgres',
		q{SELECT count(*) = 3 AND bool_and(status = 'ok') FROM replstamp.cluster WHERE NOT is_self})
	  or diag(sq($n, 'SELECT * FROM replstamp.cluster'));
	is(names($n), 'a,b,c,d', $n->name . ': replstamp.cluster lists a, b, c and d');
	is(sq($n, q{SELECT string_agg(status, ',' ORDER BY name) FROM replstamp.cluster}),
		join(',', map { $_ eq $n->name ? 'this node' : 'ok' } qw(a b c d)),
		$n->name . ': itself "this node", the others ok');
}
is(sq($d, q{SELECT count(*) FROM replstamp.cluster c JOIN replstamp.peers p USING (name)
	WHERE c.replica_id = p.replica_id AND c.last_contact IS NOT NULL AND c.changes_to_pull = 0}),
	'3', 'on d, each member has a replica ID, a last contact and nothing left to pull');

# 2. join() again changes nothing.
is(sq($d, "SELECT string_agg(action, ',') FROM replstamp.join(\$\$" . $b->connstr('postgres') . "\$\$)"),
	'there: already a peer; here: already a peer,' x 2 . 'there: already a peer; here: already a peer',
	'join() again, through b: every step is done already');

# A fifth node whose name is taken.
my $e = replstamp_node('e', defaults => 1, sql => $TRACK_T);
my ($rc, $out, $err) = $e->psql('postgres',
	"SELECT * FROM replstamp.join(\$\$" . $a->connstr('postgres') . "\$\$, name => 'b')");
like($err, qr/ERROR:  node "b" cannot join under the name of the node it joins|a peer named "b" already exists/,
	'a node joining under the name of a member is refused');
is(sq($_, q{SELECT count(*) FROM replstamp.peer WHERE conninfo LIKE '%port=} . $e->port . q{%'}), '0',
	$_->name . ' has not added it') for (@nodes, $d);

# A node whose tracked table holds rows that were never stamped.
my $f = replstamp_node('f', defaults => 1, sql => q{
	CREATE EXTENSION replstamp;
	CREATE TABLE t (id int PRIMARY KEY, v text);
	INSERT INTO t VALUES (1, 'loaded before tracking');
	SELECT replstamp.track('t');
});
($rc, $out, $err) = $f->psql('postgres', "SELECT * FROM replstamp.join(\$\$" . $a->connstr('postgres') . "\$\$)");
like($err, qr/ERROR:  cannot join: tracked table public\.t holds rows that were never stamped\n.*HINT:  .*backfill => true/s,
	'a node holding rows that were never stamped is refused, with a hint');
is(sq($a, q{SELECT count(*) FROM replstamp.peer WHERE name = 'f'}), '0', 'and a has not added it');
($rc, $out, $err) = $f->psql('postgres', 'BEGIN; SELECT * FROM replstamp.join($$' . $a->connstr('postgres') . '$$); COMMIT');
like($err, qr/replstamp\.join\(\) cannot run inside a transaction block/, 'join() refuses to run in a transaction block');

# 3. A pulling credential cannot admit a node or read connection strings.
sq($a, q{CREATE ROLE puller LOGIN REPLICATION;
	GRANT USAGE ON SCHEMA replstamp TO puller;
	GRANT EXECUTE ON FUNCTION replstamp.serve(jsonb), replstamp.wait_for_changes(bigint, interval) TO puller;
	GRANT SELECT ON replstamp.changes TO puller});
($rc, $out, $err) = $a->psql('postgres', q{SELECT * FROM replstamp.admit('intruder', 'host=evil')}, extra_params => [ '-U', 'puller' ]);
like($err, qr/permission denied for function admit/, 'a pulling role cannot admit a node');
($rc, $out, $err) = $a->psql('postgres', q{SELECT conninfo FROM replstamp.mesh}, extra_params => [ '-U', 'puller' ]);
like($err, qr/permission denied/, 'nor read the connection strings of replstamp.mesh');
is(sq($a, q{SET ROLE puller; SELECT count(*) FROM replstamp.cluster}), '4', 'replstamp.cluster is readable by every role');
($rc, $out, $err) = $e->psql('postgres', "SELECT * FROM replstamp.join(\$\$" . $a->connstr('postgres') . " user=puller\$\$)");
like($err, qr/permission denied for function admit/, 'so join() with a pulling credential is refused');

# 4. d writes and leaves at once: nothing it wrote is lost.
sq($d, q{INSERT INTO t SELECT g, 'd last' FROM generate_series(2001, 2010) g});
my $left = sq($d, 'SELECT node || \' \' || action FROM replstamp.leave() ORDER BY 1');
is($left, join("\n", map { "$_ pulled from here, dropped there; dropped here" } qw(a b c)),
	'leave(): every member pulls from d and drops it, d drops them');
is(sq($d, 'SELECT count(*) FROM replstamp.peer') . ' ' . sq($d, 'SELECT count(*) FROM replstamp.mesh'),
	'0 0', 'd has no peer left and no name in a mesh');
for my $n (@nodes)
{
	is(sq($n, q{SELECT count(*) FROM t WHERE v = 'd last'}), '10', $n->name . ' holds what d wrote just before it left');
	is(names($n), 'a,b,c',
		$n->name . ': replstamp.cluster lists a, b and c only');
}
wait_converged(\@nodes, ['t'], 'the three after d left');

# 5. A node that joins with a pulling role for my_conninfo: the others
# pull from it as that role, and it pulls from the sponsor as that role
# too (the sponsor did not join with join(), so it has no my_conninfo).
my $g = replstamp_node('g', defaults => 1, sql => $TRACK_T . q{
	CREATE ROLE puller LOGIN REPLICATION;
	GRANT USAGE ON SCHEMA replstamp TO puller;
	GRANT EXECUTE ON FUNCTION replstamp.serve(jsonb), replstamp.wait_for_changes(bigint, interval) TO puller;
	GRANT SELECT ON replstamp.changes TO puller;
});
sq($g, "SELECT * FROM replstamp.join(\$\$" . $a->connstr('postgres') . "\$\$, my_conninfo => \$\$"
	  . $g->connstr('postgres') . " user=puller\$\$)");
like(sq($a, q{SELECT conninfo FROM replstamp.peer WHERE name = 'g'}), qr/user=puller/,
	'a pulls from g with the my_conninfo g gave, as the pulling role');
like(sq($g, q{SELECT conninfo FROM replstamp.peer WHERE name = 'a'}), qr/user='puller'/,
	"g pulls from a as the same role, at a's address");
sq($g, q{INSERT INTO t VALUES (3000, 'from g')});
wait_converged([ @nodes, $g ], ['t'], 'g, joined with a pulling role');
$a->poll_query_until('postgres', q{SELECT status = 'ok' FROM replstamp.cluster WHERE name = 'g'})
  or diag(sq($a, 'SELECT * FROM replstamp.cluster'));
is(sq($a, q{SELECT status FROM replstamp.cluster WHERE name = 'g'}), 'ok',
	'a shows g ok: it pulls from g, and g pulls from it as a trusted puller');

# 6. A member known by another name than its own: a calls h "hh" (peers
# added by hand).  A node joining through a reaches it as "hh" and joins
# it once.
my $h = replstamp_node('h', defaults => 1, sql => $TRACK_T);
add_peer($a, 'hh', $h);
add_peer($h, 'a', $a);
my $i = replstamp_node('i', defaults => 1, sql => $TRACK_T);
is(sq($i, "SELECT string_agg(node || ' ' || action, ',' ORDER BY node) FROM replstamp.join(\$\$" . $a->connstr('postgres') . "\$\$)"),
	join(',', map { "$_ there: added; here: added" } qw(a b c g hh)),
	'i joins a, b, c, g and h, which a calls hh, once each');
is(sq($h, q{SELECT string_agg(name, ',' ORDER BY name) FROM replstamp.peer}), 'a,i', 'h has i as a peer');
sq($h, q{INSERT INTO t VALUES (4000, 'from h')});
$i->poll_query_until('postgres', q{SELECT count(*) = 1 FROM t WHERE id = 4000})
  or die "h's write does not reach i";
pass("h's write reaches i");

done_testing();
