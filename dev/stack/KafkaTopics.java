// Creates the given Kafka topics if they are missing (used by kafka.sh topics).
// Run with the java source launcher: java -cp '<kafka libs>/*' KafkaTopics.java BOOTSTRAP PARTITIONS TOPIC...
import java.util.*;
import java.util.concurrent.ExecutionException;
import org.apache.kafka.clients.admin.*;
import org.apache.kafka.common.errors.TopicExistsException;

public class KafkaTopics {
  public static void main(String[] args) throws Exception {
    if (args.length < 3) {
      System.err.println("usage: KafkaTopics BOOTSTRAP PARTITIONS TOPIC...");
      System.exit(2);
    }
    int partitions = Integer.parseInt(args[1]);
    // Agrees with the broker's message.max.bytes and the producers' max_request_size (kafka.sh).
    String maxMessageBytes = System.getenv().getOrDefault("KAFKA_TOPIC_MAX_MESSAGE_BYTES", "1048588");
    Set<String> wanted = new LinkedHashSet<>(Arrays.asList(args).subList(2, args.length));
    Properties props = new Properties();
    props.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, args[0]);
    props.put(AdminClientConfig.DEFAULT_API_TIMEOUT_MS_CONFIG, "30000");
    try (Admin admin = Admin.create(props)) {
      Set<String> existing = admin.listTopics().names().get();
      List<NewTopic> missing = new ArrayList<>();
      for (String t : wanted) {
        if (!existing.contains(t)) missing.add(new NewTopic(t, partitions, (short) 1).configs(Map.of("max.message.bytes", maxMessageBytes)));
      }
      int failed = 0;
      for (Map.Entry<String, ? extends org.apache.kafka.common.KafkaFuture<Void>> e :
          admin.createTopics(missing).values().entrySet()) {
        try {
          e.getValue().get();
          System.out.println("created " + e.getKey());
        } catch (ExecutionException ex) {
          if (ex.getCause() instanceof TopicExistsException) continue;
          System.err.println("failed " + e.getKey() + ": " + ex.getCause());
          failed++;
        }
      }
      Map<String, TopicDescription> desc = admin.describeTopics(wanted).allTopicNames().get();
      for (String t : wanted) {
        TopicDescription d = desc.get(t);
        int n = d.partitions().size();
        System.out.println("topic " + t + " partitions=" + n + (n != partitions ? " (differs from " + partitions + ")" : ""));
      }
      System.exit(failed == 0 ? 0 : 1);
    }
  }
}
