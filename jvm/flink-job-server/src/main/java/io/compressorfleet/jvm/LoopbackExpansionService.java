package io.compressorfleet.jvm;

import java.util.Arrays;
import org.apache.beam.sdk.expansion.service.ExpansionServer;
import org.apache.beam.sdk.expansion.service.ExpansionService;
import org.apache.beam.sdk.expansion.service.ExpansionServiceOptions;
import org.apache.beam.sdk.options.PipelineOptions;
import org.apache.beam.sdk.options.PipelineOptionsFactory;

/**
 * Beam's expansion service bound to one address (Beam's own main listens on every interface).
 *
 * <p>Usage: {@code java -cp <job-server-jar> io.compressorfleet.jvm.LoopbackExpansionService
 * 127.0.0.1 8096 --experiments=use_deprecated_read --defaultEnvironmentType=EMBEDDED}. The
 * options after host and port are the expansion service's own: they decide how the Java transforms
 * it expands run (here the legacy KafkaIO read, in the TaskManager's JVM).
 */
public final class LoopbackExpansionService {
  private LoopbackExpansionService() {}

  public static void main(String[] args) throws Exception {
    if (args.length < 2) {
      System.err.println("usage: LoopbackExpansionService <host> <port> [pipeline options]");
      System.exit(2);
    }
    String host = args[0];
    int port = Integer.parseInt(args[1]);
    PipelineOptionsFactory.register(ExpansionServiceOptions.class);
    PipelineOptions options =
        PipelineOptionsFactory.fromArgs(Arrays.copyOfRange(args, 2, args.length)).create();
    ExpansionServer server =
        ExpansionServer.create(new ExpansionService(options, host + ":" + port), host, port);
    System.out.println("Expansion service listening on " + server.getHost() + ":" + server.getPort());
    Thread.currentThread().join();
  }
}
