# Helpers shared by replstamp's TAP tests.
#
# Copyright (c) 2026, the replstamp authors
package ReplstampTest;

use strict;
use warnings;
use Exporter 'import';
use PostgreSQL::Test::Cluster;

our @EXPORT = qw(replstamp_node add_peer start_verified);

# A started node with replstamp preloaded.  Options: init => { ... } for
# PostgreSQL::Test::Cluster::init, conf => [ lines ] for postgresql.conf,
# sql => statements to run in database postgres once it is up.
sub replstamp_node
{
	my ($name, %opts) = @_;
	my $node = PostgreSQL::Test::Cluster->new($name);
	$node->init(%{ $opts{init} // {} });
	$node->append_conf('postgresql.conf',
		join("\n", "shared_preload_libraries = 'replstamp'", @{ $opts{conf} // [] }) . "\n");
	$node->start;
	$node->safe_psql('postgres', $opts{sql}) if defined $opts{sql};
	return $node;
}

# $node pulls from $peer, which it calls $name.
sub add_peer
{
	my ($node, $name, $peer) = @_;
	$node->safe_psql('postgres',
		"SELECT replstamp.add_peer('$name', \$\$" . $peer->connstr('postgres') . "\$\$)");
	return;
}

# Run $action (a start, restart, ...) on $node, then wait until this start
# has verified the identity of each database in @dbs (default: postgres).
# Only log lines written after $action began count: an earlier start's
# lines must not satisfy the wait.
sub start_verified
{
	my ($node, $action, @dbs) = @_;
	my $offset = -s $node->logfile // 0;
	$action->();
	$node->wait_for_log(qr/identity of database "$_" verified/, $offset)
	  for (@dbs ? @dbs : ('postgres'));
	return;
}

1;
