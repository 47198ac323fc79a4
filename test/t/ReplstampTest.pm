# Helpers shared by replstamp's TAP tests.
#
# Copyright (c) 2026, the replstamp authors
package ReplstampTest;

use strict;
use warnings;
use Exporter 'import';
use PostgreSQL::Test::Cluster;

our @EXPORT = qw(replstamp_node add_peer);

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

1;
